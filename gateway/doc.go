// Package gateway is driftgate's data path: the frame format that wraps every
// relayed datagram, the relay that receives UDP datagrams on the service
// address and tees them to every server, and the receiver that checks,
// de-duplicates and delivers them to the local application.
//
// The frame format is specified in docs/frame.md; the test vectors there are
// loaded from testdata/vectors.json by the tests, so the document and the code
// cannot drift apart.
//
// Nothing in this package starts a goroutine from a constructor: Relay.Run and
// Receiver.Run block until their context is cancelled, and return nil then.
package gateway
