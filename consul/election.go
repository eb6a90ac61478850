package consul

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"

	"driftgate/internal/retry"
)

// EventKind is what the election tells its caller.
type EventKind uint8

// Events, in the order a term produces them: Acquired, then Bind, then
// MustDrop; or Acquired then Lost when the term ends before Bind.
const (
	// Acquired: this node holds the lock with Epoch, but must not bind the
	// VIP yet (the previous holder may still have it).
	Acquired EventKind = iota + 1
	// Bind: T_wait has passed (or the last holder released cleanly) and
	// the lock is confirmed: bind the VIP now.
	Bind
	// MustDrop: drop the VIP now, before returning from the callback.
	MustDrop
	// Lost: the term ended before Bind; there is nothing to drop.
	Lost
	// Renewed: a bound holder's lease was extended to Deadline (after each
	// confirmation), so the caller can extend a kernel-side lease too.
	Renewed
)

var eventNames = map[EventKind]string{Acquired: "acquired", Bind: "bind", MustDrop: "must_drop", Lost: "lost", Renewed: "renewed"}

// String returns the event kind for logs.
func (k EventKind) String() string { return eventNames[k] }

// Event is one report from the election.
type Event struct {
	Kind   EventKind
	Epoch  uint64
	Reason string // for MustDrop and Lost
	Time   time.Time
	// Deadline, for Bind and Renewed, is when the lease ends: the VIP
	// must be gone by then unless a Renewed event extends it.
	Deadline time.Time
}

// Config configures an Election.
type Config struct {
	// Key is the leader key, e.g. "driftgate/leader".
	Key string
	// Node names this node in the key's value and in logs.
	Node   string
	Timing Timing
	// NodeChecks bound to the session; nil means ["serfHealth"].
	NodeChecks []string
	// ServiceChecks bound to the session: the heartbeat check, the user's
	// checks and the link check (see Registration.CheckIDs).
	ServiceChecks []string
	// Priority 0..100: after an unclean end of the last term, a node waits
	// (100−Priority) ms before contending, so higher priorities tend to
	// win. A seam for preemption; it never overrides safety.
	Priority int
	// Ready, if set, gates each new session: while it says false the node
	// does not contend. The agent says false while its heartbeat to the
	// local Consul agent fails: that agent will sync the heartbeat check
	// critical to the servers once it can, and would invalidate a session
	// created in the meantime at once.
	Ready func() bool
	// CheckRefused, if set, is told when the servers refuse a session
	// because of one of its checks (its ID) after Ready said yes: they
	// hold it critical (missing false) or do not have it at all (missing
	// true). The servers may hold a status the local agent failed to sync
	// while it could not reach them (a cut-off seen to last 70 s), or have
	// lost the node's registration (a Consul cluster rebuilt under running
	// agents); the local agent re-syncs at its anti-entropy interval, a
	// minute or more, and the caller can make it sync at once.
	CheckRefused func(ctx context.Context, checkID string, missing bool)
}

// refusedCheck finds the check a session was refused for: critical on
// the servers (group 1) or missing there (group 2).
var refusedCheck = regexp.MustCompile(`Check '([^']+)' is in critical state|Missing check '([^']+)' registration`)

func (c *Config) validate() error {
	switch {
	case c.Key == "" || strings.HasPrefix(c.Key, "/"):
		return fmt.Errorf("key %q: want a KV path such as driftgate/leader", c.Key)
	case c.Node == "":
		return errors.New("node: a node name is required")
	case c.Priority < 0 || c.Priority > 100:
		return fmt.Errorf("priority: %d is out of range 0..100", c.Priority)
	}
	if err := c.Timing.Validate(); err != nil {
		return fmt.Errorf("timing: %w", err)
	}
	return nil
}

// Phase is the election's state for status and metrics.
type Phase uint8

// Phases.
const (
	PhaseContending Phase = iota + 1 // watching the key, not holding
	PhaseWaiting                     // holding the lock, waiting out T_wait
	PhaseHolding                     // holding the lock and the VIP
	PhaseHoldOff                     // stepped down; not contending for a while
)

var phaseNames = map[Phase]string{PhaseContending: "contending", PhaseWaiting: "waiting", PhaseHolding: "holding", PhaseHoldOff: "hold_off"}

// String returns the phase for status and logs.
func (p Phase) String() string { return phaseNames[p] }

// Snapshot is the election's current state.
type Snapshot struct {
	Phase       Phase
	Epoch       uint64
	Session     string
	LastConfirm time.Time // when the last successful confirmation was sent
	Deadline    time.Time // holder's lease deadline
	// Eligible: contending with a live session, so this node takes over if
	// the holder fails. Ineligible says why not (a check critical, the
	// heartbeat to the local agent failing, holding off, holding).
	Eligible   bool
	Ineligible string
}

// Election runs the leader election for one node.
type Election struct {
	c   *api.Client
	cfg Config
	log *slog.Logger

	stepDown chan stepDownReq

	mu   sync.Mutex
	snap Snapshot
}

type stepDownReq struct {
	holdOff time.Duration
	epoch   uint64 // the term to end
	done    chan error
}

// ErrNotHolding: a step-down was asked for a term that has already ended.
var ErrNotHolding = errors.New("the term to step down from has ended")

// NewElection checks cfg. It opens nothing; Run does the work.
func NewElection(c *api.Client, cfg Config, log *slog.Logger) (*Election, error) {
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("election: %w", err)
	}
	if cfg.NodeChecks == nil {
		cfg.NodeChecks = []string{"serfHealth"}
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Election{c: c, cfg: cfg, log: log.With("component", "election"), stepDown: make(chan stepDownReq)}, nil
}

// Snapshot returns the current state.
func (e *Election) Snapshot() Snapshot {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.snap
}

func (e *Election) setSnap(f func(*Snapshot)) {
	e.mu.Lock()
	f(&e.snap)
	e.mu.Unlock()
}

// StepDown asks a running election to end the term with epoch: if this
// node has bound the VIP, emit gets MustDrop first (the caller drops the
// VIP), then the lock is released with a clean-release value so a standby
// takes over at once. The node then does not contend for holdOff. It
// returns when the lock is released, or ctx ends. If that term is not the
// current one when the election takes the request — it ended meanwhile, or
// none was running — nothing changes and it returns ErrNotHolding: a
// reason to give up one term is no reason to give up the next.
func (e *Election) StepDown(ctx context.Context, epoch uint64, holdOff time.Duration) error {
	if s := e.Snapshot(); s.Epoch != epoch || (s.Phase != PhaseWaiting && s.Phase != PhaseHolding) {
		return ErrNotHolding // the common case, answered without waiting for the election
	}
	req := stepDownReq{holdOff: holdOff, epoch: epoch, done: make(chan error, 1)}
	select {
	case e.stepDown <- req:
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-req.done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Run takes part in the election until ctx is cancelled: it creates a
// session bound to the configured checks, contends for the key, and holds
// it, reporting through emit. emit is called on Run's goroutine and must
// drop the VIP before it returns on MustDrop; an error from it then says
// the VIP may still be there, and the election tells no successor to
// hurry (no clean release, no dropped marker). Errors for other events are
// logged. On cancellation a holder drops (MustDrop) and releases cleanly;
// Run then returns nil.
func (e *Election) Run(ctx context.Context, emit func(Event) error) error {
	var holdOff time.Duration
	attempt := 0
	// Sessions of ended terms that could not be destroyed (Consul was
	// unreachable). One may still hold the key although this node dropped
	// the VIP long ago: left alone, it would keep everyone waiting for its
	// TTL or a check to end it after Consul is reachable again.
	var stale []string
	for ctx.Err() == nil {
		stale = e.destroySessions(stale)
		if holdOff > 0 {
			e.setSnap(func(s *Snapshot) {
				*s = Snapshot{Phase: PhaseHoldOff, Ineligible: fmt.Sprintf("holding off for %s after a step-down", holdOff)}
			})
			e.log.Info("holding off before contending again", "for", holdOff)
			if !e.sleep(ctx, holdOff) {
				return nil
			}
			holdOff = 0
		}
		e.setSnap(func(s *Snapshot) {
			*s = Snapshot{Phase: PhaseContending, Ineligible: s.Ineligible}
			if s.Ineligible == "" {
				s.Ineligible = "creating a session"
			}
		})
		if e.cfg.Ready != nil && !e.cfg.Ready() {
			e.setSnap(func(s *Snapshot) { s.Ineligible = "the heartbeat to the local Consul agent is failing" })
			if !e.sleep(ctx, 100*time.Millisecond) {
				return nil
			}
			continue
		}
		sess, err := e.createSession(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			attempt++
			wait := retry.Backoff(attempt)
			// At a start the servers often still hold a check critical
			// that the last run left so (its heartbeat stopped with it)
			// until the new one's first pass syncs: not worth a warning.
			lvl := slog.LevelWarn
			if refusedCheck.MatchString(err.Error()) && attempt < 3 {
				lvl = slog.LevelInfo
			}
			e.log.Log(ctx, lvl, "cannot create session; retrying", "err", err, "attempt", attempt, "retry_in", wait)
			if m := refusedCheck.FindStringSubmatch(err.Error()); m != nil && e.cfg.CheckRefused != nil && attempt >= 3 {
				e.cfg.CheckRefused(ctx, m[1]+m[2], m[2] != "")
			}
			e.setSnap(func(s *Snapshot) { s.Ineligible = "no session: " + err.Error() })
			if !e.sleep(ctx, wait) {
				return nil
			}
			continue
		}
		attempt = 0
		e.setSnap(func(s *Snapshot) { s.Session, s.Eligible, s.Ineligible = sess, true, "" })
		holdOff = e.term(ctx, sess, emit)
		stale = e.destroySessions(append(stale, sess))
	}
	return nil
}

// destroySessions destroys each session and returns those it could not.
func (e *Election) destroySessions(ids []string) []string {
	var left []string
	for _, id := range ids {
		if !e.destroySession(id) {
			left = append(left, id)
		}
	}
	return left
}

func (e *Election) sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return false
		case <-t.C:
			return true
		case req := <-e.stepDown:
			req.done <- ErrNotHolding // no term runs while sleeping
		}
	}
}

func (e *Election) reqCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, e.cfg.Timing.RequestTimeout)
}

func (e *Election) createSession(ctx context.Context) (string, error) {
	checks := make([]api.ServiceCheck, len(e.cfg.ServiceChecks))
	for i, id := range e.cfg.ServiceChecks {
		checks[i] = api.ServiceCheck{ID: id}
	}
	se := &api.SessionEntry{
		Name:          sessionName(e.cfg.Node),
		LockDelay:     e.cfg.Timing.LockDelay,
		Behavior:      api.SessionBehaviorRelease,
		NodeChecks:    e.cfg.NodeChecks,
		ServiceChecks: checks,
	}
	if e.cfg.Timing.SessionTTL > 0 {
		se.TTL = e.cfg.Timing.SessionTTL.String()
	}
	if se.LockDelay == 0 {
		// The API omits a zero LockDelay and Consul then applies 15s.
		se.LockDelay = time.Millisecond
	}
	rctx, cancel := e.reqCtx(ctx)
	defer cancel()
	id, _, err := e.c.Session().Create(se, (&api.WriteOptions{}).WithContext(rctx))
	if err != nil {
		return "", fmt.Errorf("creating session bound to %v and %v: %w", se.NodeChecks, e.cfg.ServiceChecks, err)
	}
	return id, nil
}

// destroySession reports whether the session is gone (destroying one that
// Consul already ended succeeds).
func (e *Election) destroySession(id string) bool {
	ctx, cancel := context.WithTimeout(context.Background(), e.cfg.Timing.RequestTimeout)
	defer cancel()
	if _, err := e.c.Session().Destroy(id, (&api.WriteOptions{}).WithContext(ctx)); err != nil {
		e.log.Debug("destroying session", "session", id, "err", err)
		return false
	}
	return true
}

// errSessionGone ends a term whose session no longer exists.
var errSessionGone = errors.New("session invalidated")

// term contends and holds with one session. It returns the hold-off to
// observe before the next term (after a step-down).
func (e *Election) term(ctx context.Context, sess string, emit func(Event) error) time.Duration {
	var renewDone chan struct{}
	if ttl := e.cfg.Timing.SessionTTL; ttl > 0 {
		renewDone = make(chan struct{})
		defer close(renewDone)
		go func() {
			// RenewPeriodic ends when the session is gone; the holder
			// notices through its confirmations.
			_ = e.c.Session().RenewPeriodic(ttl.String(), sess, nil, renewDone)
		}()
	}
	acq, err := e.contend(ctx, sess)
	if err != nil {
		if !errors.Is(err, context.Canceled) && ctx.Err() == nil {
			e.log.Info("ending term", "reason", err)
		}
		return 0
	}
	e.setSnap(func(s *Snapshot) {
		s.Phase, s.Epoch, s.LastConfirm, s.Deadline = PhaseWaiting, acq.epoch, acq.sent, acq.sent.Add(e.cfg.Timing.TFence)
		s.Eligible, s.Ineligible = false, "holds the lock"
	})
	e.log.Info("acquired the lock", "epoch", acq.epoch, "clean_predecessor", acq.clean, "bind_in", time.Until(acq.bindAt).Round(time.Millisecond))
	e.emitLogged(emit, Event{Kind: Acquired, Epoch: acq.epoch, Time: time.Now()})
	return e.hold(ctx, sess, acq, emit)
}

// emitLogged emits an event whose error only needs logging.
func (e *Election) emitLogged(emit func(Event) error, ev Event) {
	if err := emit(ev); err != nil {
		e.log.Warn("handling election event", "event", ev.Kind.String(), "err", err)
	}
}

// acquisition is a won lock.
type acquisition struct {
	epoch  uint64    // ModifyIndex of the acquiring write
	sent   time.Time // when the acquiring request was sent: the lease starts here
	bindAt time.Time // earliest time to bind the VIP
	clean  bool      // the previous holder released cleanly
	// pred is the session of the term just before ours, named in the
	// free key's value: every acquisition and release writes its session
	// there. If that term leaves a dropped marker, no node holds the VIP
	// and we need not wait out T_wait. Empty when unknown (the key was
	// absent, or an operator wrote it).
	pred string
	// broke: the lock was taken from a term whose lease had run out.
	broke bool
}

// leaseView is what a contender has seen of the lease record: its
// ModifyIndex and when this node first saw that index (on its monotonic
// clock, at the answer's arrival: after the server processed the write).
// exists is false while the record is absent.
type leaseView struct {
	mu     sync.Mutex
	known  bool // an answer has come
	exists bool
	idx    uint64
	seen   time.Time
}

func (v *leaseView) record(pair *api.KVPair, at time.Time) {
	v.mu.Lock()
	defer v.mu.Unlock()
	idx := uint64(0)
	if pair != nil {
		idx = pair.ModifyIndex
	}
	if !v.known || v.exists != (pair != nil) || v.idx != idx {
		v.known, v.exists, v.idx, v.seen = true, pair != nil, idx, at
	}
}

func (v *leaseView) get() (known, exists bool, idx uint64, seen time.Time) {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.known, v.exists, v.idx, v.seen
}

// watchLease keeps view up to date with the lease record until ctx ends.
func (e *Election) watchLease(ctx context.Context, view *leaseView) {
	watch(ctx, e.cfg.Timing.RequestTimeout, nil, func(q *api.QueryOptions) (*api.QueryMeta, bool, error) {
		pair, meta, err := e.c.KV().Get(e.leaseKey(), q)
		if err == nil {
			view.record(pair, time.Now())
		}
		return meta, false, err
	}, nil)
}

// heldView is the term a contender sees holding the key: its session, the
// key's ModifyIndex (which renewals do not change: they write the lease
// record) and when this node first saw it so.
type heldView struct {
	session string
	idx     uint64
	seen    time.Time
}

// proof is the lease argument for a term this node watched: with no renewal
// after lease index leaseIdx and T_wait passed since base on this clock,
// that term's lease has ended and its holder has dropped the VIP (see
// docs/election.md). A transaction that checks leaseIdx makes the
// argument hold at the server.
type proof struct {
	base     time.Time // the later of: the term first seen holding, its last renewal first seen
	leaseIdx uint64    // 0: the record is absent
	session  string    // the term's session
}

// at is when the proof is complete.
func (p proof) at(t Timing) time.Time { return p.base.Add(t.TWait) }

// check is the transaction operation that makes the proof hold: no renewal
// since this node's view of the lease record.
func (p proof) check(key string) *api.KVTxnOp {
	if p.leaseIdx == 0 {
		return &api.KVTxnOp{Verb: api.KVCheckNotExists, Key: key}
	}
	return &api.KVTxnOp{Verb: api.KVCheckIndex, Key: key, Index: p.leaseIdx}
}

// proofFor returns the lease proof for the term held as h, if this node
// has watched it and the lease record.
func proofFor(h heldView, lv *leaseView) (proof, bool) {
	known, exists, idx, seen := lv.get()
	if h.session == "" || !known {
		return proof{}, false
	}
	p := proof{base: h.seen, session: h.session}
	if exists {
		p.leaseIdx = idx
		if seen.After(p.base) {
			p.base = seen
		}
	}
	return p, true
}

// contend waits for the key to be free, or for the proof that its holder's
// lease has ended, and takes it. Three ways lead to the lock, each with its
// own earliest bind time: the key seen free (T_wait after a consistent read
// showed it free, at once after a clean release); the key seen free after a
// term this node watched with its lease record (T_wait after the later of
// that term's start and its last renewal, if sooner); and breaking the
// lock of a term whose lease has run out (no renewal for T_wait): the
// holder's host is dead, frozen or cut off, and Consul has not noticed yet.
func (e *Election) contend(parent context.Context, sess string) (acquisition, error) {
	// A contender's session can end while it waits (a check turned
	// critical): it is then not eligible to take over, and must make a
	// new session (which fails, and says why, while the check is
	// critical) instead of waiting with a dead one.
	ctx, cancel := context.WithCancelCause(parent)
	defer cancel(nil)
	go e.watchSession(ctx, sess, cancel)
	acq, err := e.contendWith(ctx, sess)
	if err != nil && errors.Is(context.Cause(ctx), errSessionGone) && parent.Err() == nil {
		return acquisition{}, errSessionGone
	}
	return acq, err
}

// watchSession ends ctx (cause errSessionGone) when the session is gone.
func (e *Election) watchSession(ctx context.Context, sess string, cancel context.CancelCauseFunc) {
	watch(ctx, e.cfg.Timing.RequestTimeout, nil, func(q *api.QueryOptions) (*api.QueryMeta, bool, error) {
		info, meta, err := e.c.Session().Info(sess, q)
		if err != nil {
			return nil, false, err
		}
		if info == nil {
			cancel(errSessionGone)
			return meta, true, nil
		}
		return meta, false, nil
	}, nil)
}

func (e *Election) contendWith(ctx context.Context, sess string) (acquisition, error) {
	kv := e.c.KV()
	t := e.cfg.Timing
	var (
		seenIdx uint64    // ModifyIndex of the free key when first seen (0: absent)
		seenAt  time.Time // when a consistent read first showed it free at seenIdx
		watch   blocking
		held    heldView // the term seen holding the key
		reread  bool     // read the key afresh before the next break
	)
	lctx, stopLease := context.WithCancel(ctx)
	defer stopLease()
	var lease leaseView
	go e.watchLease(lctx, &lease)
	prio := time.Duration(100-e.cfg.Priority) * time.Millisecond
	for {
		if err := ctx.Err(); err != nil {
			return acquisition{}, err
		}
		// 1. A blocking read notices the key becoming free cheaply. Its
		// answer proves nothing about "now"; step 3 and the transactions
		// do. While a term holds the key, the read ends when the proof
		// that its lease has run out would be complete.
		q, cancel := watch.options(ctx, t.RequestTimeout)
		breakAt, rearm := time.Time{}, false
		switch p, ok := proofFor(held, &lease); {
		case reread:
			// A break was refused: the key may have changed (its holder's
			// session ended just now, say). Read it as it is, without a
			// deadline that has passed already, before anything else.
			reread = false
		case ok:
			breakAt = p.at(t).Add(prio)
			q = q.WithContext(breakContext(q.Context(), breakAt))
		case held.session != "":
			// A term holds the key but the lease watch has not answered
			// yet: look again shortly, or this read would block until
			// the key changes and the proof would never be acted on.
			// (Renewals only move the proof later, which the loop
			// handles by looking again when it would have been due.)
			rearm = true
			q = q.WithContext(breakContext(q.Context(), time.Now().Add(50*time.Millisecond)))
		}
		pair, meta, err := kv.Get(e.cfg.Key, q)
		cancel()
		if err != nil && errors.Is(err, context.DeadlineExceeded) && rearm && ctx.Err() == nil {
			continue
		}
		if err != nil && errors.Is(err, context.DeadlineExceeded) && !breakAt.IsZero() && !time.Now().Before(breakAt) && ctx.Err() == nil {
			// The wait for the proof ended the read: break, if the
			// proof holds at the server.
			if acq, ok, err := e.breakLock(ctx, sess, held, &lease); err != nil || ok {
				return acq, err
			}
			// A renewal came, or the key changed: read the key again
			// (not blocking), once the watches have caught up.
			watch.reset()
			reread = true
			if !e.sleep(ctx, 50*time.Millisecond) {
				return acquisition{}, ctx.Err()
			}
			continue
		}
		if err != nil {
			n, wait := watch.failed()
			if ctx.Err() == nil {
				e.log.Debug("watching leader key", "err", err, "attempt", n)
			}
			if !e.sleep(ctx, wait) {
				return acquisition{}, ctx.Err()
			}
			continue
		}
		watch.answered(meta)
		if pair != nil && pair.Session != "" {
			if pair.Session == sess {
				return acquisition{}, errors.New("the key is held by this session already")
			}
			if held.session != pair.Session || held.idx != pair.ModifyIndex {
				held = heldView{session: pair.Session, idx: pair.ModifyIndex, seen: time.Now()}
			}
			continue
		}
		if ok, err := e.sessionAlive(ctx, sess); err == nil && !ok {
			return acquisition{}, errSessionGone
		}
		// 2. Priority: after an unclean end a higher priority goes first
		// (1 ms per point below 100). After a clean release there is no
		// race worth ordering, and the hand-over must be quick.
		if pair == nil || !parseValue(pair.Value).Released {
			if prio > 0 && !e.sleep(ctx, prio) {
				return acquisition{}, ctx.Err()
			}
		}
		// 3. A consistent read: the leader checks with a quorum, so "free"
		// here means every earlier holder had lost the lock before now.
		rctx, cancel := e.reqCtx(ctx)
		pair, _, err = kv.Get(e.cfg.Key, (&api.QueryOptions{RequireConsistent: true}).WithContext(rctx))
		cancel()
		now := time.Now()
		if err != nil {
			watch.reset() // look again without blocking
			if !e.sleep(ctx, 50*time.Millisecond) {
				return acquisition{}, ctx.Err()
			}
			continue
		}
		if pair != nil && pair.Session != "" {
			continue
		}
		pred := ""
		if pair != nil {
			pred = parseValue(pair.Value).Session
		}
		idx := uint64(0)
		if pair != nil {
			idx = pair.ModifyIndex
		}
		// The first sighting of this exact state starts the wait; a retry
		// over the same ModifyIndex keeps it (nothing changed in between:
		// the transaction checks that). An absent key has no index to
		// check, so each sighting starts afresh.
		if seenAt.IsZero() || idx != seenIdx || idx == 0 {
			seenIdx, seenAt = idx, now
		}
		clean := pair != nil && parseValue(pair.Value).Released
		bindAt := seenAt.Add(t.TWait)
		// The term that just ended, if this node watched it and its
		// lease: its lease proof may complete sooner. The transaction
		// then also checks that no renewal came after what this node saw.
		p, watched := proofFor(held, &lease)
		watched = watched && pred != "" && pred == held.session
		if watched && p.at(t).Before(bindAt) {
			bindAt = p.at(t)
		}
		// 4. Take it, only if nothing changed since the read; read back
		// the ModifyIndex of our write: the epoch.
		check := &api.KVTxnOp{Verb: api.KVCheckIndex, Key: e.cfg.Key, Index: idx}
		if pair == nil {
			check = &api.KVTxnOp{Verb: api.KVCheckNotExists, Key: e.cfg.Key}
		}
		val := leaderValue{Node: e.cfg.Node, Since: time.Now().UTC(), Session: sess}
		ops := api.KVTxnOps{check}
		if watched {
			ops = append(ops, p.check(e.leaseKey()))
		}
		ops = append(ops, &api.KVTxnOp{Verb: api.KVLock, Key: e.cfg.Key, Value: val.encode(), Session: sess}, &api.KVTxnOp{Verb: api.KVGet, Key: e.cfg.Key})
		got, sent, err := e.lockTxn(ctx, ops)
		if err != nil {
			// Changed since the read, or lock-delay: the next read must
			// not block waiting for a change that will not come.
			watch.reset()
			if errors.Is(err, errSessionGone) {
				return acquisition{}, err
			}
			if !e.sleep(ctx, 50*time.Millisecond) {
				return acquisition{}, ctx.Err()
			}
			continue
		}
		if got.Session != sess {
			return acquisition{}, fmt.Errorf("lock transaction on %s: the read-back does not show our session", e.cfg.Key)
		}
		a := acquisition{epoch: got.ModifyIndex, sent: sent, bindAt: bindAt, clean: clean, pred: pred}
		if clean {
			a.bindAt = time.Now()
		}
		return a, nil
	}
}

// breakContext is ctx ending at d at the latest; it is released with ctx
// (the query's own context, cancelled after each read).
func breakContext(ctx context.Context, d time.Time) context.Context {
	bctx, cancel := context.WithDeadline(ctx, d)
	context.AfterFunc(ctx, cancel)
	return bctx
}

// errTxnRefused: a lock transaction's checks failed (the key or the lease
// record changed since it was read, or lock-delay).
var errTxnRefused = errors.New("lock transaction refused")

// lockTxn runs a transaction that ends with locking the key and reading
// it back; it returns the read-back and when the request was sent.
func (e *Election) lockTxn(ctx context.Context, ops api.KVTxnOps) (*api.KVPair, time.Time, error) {
	rctx, cancel := e.reqCtx(ctx)
	defer cancel()
	sent := time.Now()
	ok, resp, _, err := e.c.KV().Txn(ops, (&api.QueryOptions{}).WithContext(rctx))
	if err != nil {
		return nil, sent, err
	}
	if !ok {
		for _, te := range resp.Errors {
			if strings.Contains(te.What, "invalid session") || strings.Contains(te.What, "does not exist") {
				return nil, sent, errSessionGone
			}
		}
		return nil, sent, errTxnRefused
	}
	// The get is the last operation (check-not-exists returns nothing).
	if n := len(resp.Results); n > 0 && resp.Results[n-1] != nil {
		return resp.Results[n-1], sent, nil
	}
	return nil, sent, fmt.Errorf("lock transaction on %s: no read-back", e.cfg.Key)
}

// breakLock takes the key from a term whose lease has run out, in one
// transaction that holds only if, at the server, the key is still as this
// node saw that term hold it and the lease record has not changed since
// this node's view of it: no renewal for T_wait, so the holder has dropped
// the VIP (its lease ended, and its kernel removed the VIP even if it is
// frozen). Deleting the key (check-and-set) does not trigger lock-delay,
// and the lock and read-back follow in the same transaction; the new epoch
// is above every earlier one. It reports ok=false, and no error, when the
// proof does not hold (a renewal came, the key changed).
func (e *Election) breakLock(ctx context.Context, sess string, held heldView, lease *leaseView) (acquisition, bool, error) {
	p, ok := proofFor(held, lease)
	if !ok || time.Now().Before(p.at(e.cfg.Timing)) {
		return acquisition{}, false, nil
	}
	val := leaderValue{Node: e.cfg.Node, Since: time.Now().UTC(), Session: sess}
	ops := api.KVTxnOps{
		{Verb: api.KVCheckIndex, Key: e.cfg.Key, Index: held.idx},
		p.check(e.leaseKey()),
		{Verb: api.KVDeleteCAS, Key: e.cfg.Key, Index: held.idx},
		{Verb: api.KVLock, Key: e.cfg.Key, Value: val.encode(), Session: sess},
		{Verb: api.KVGet, Key: e.cfg.Key},
	}
	got, sent, err := e.lockTxn(ctx, ops)
	switch {
	case errors.Is(err, errSessionGone):
		return acquisition{}, false, err
	case err != nil:
		e.log.Info("breaking the lock did not go through (a renewal came, or the key changed)", "err", err, "holder_session", held.session)
		return acquisition{}, false, nil
	case got.Session != sess:
		return acquisition{}, false, fmt.Errorf("break transaction on %s: the read-back does not show our session", e.cfg.Key)
	}
	e.log.Warn("broke the lock of a holder whose lease ran out", "holder_session", held.session,
		"no_renewal_for", time.Since(p.base).Round(time.Millisecond), "epoch", got.ModifyIndex)
	// The holder's lease has ended: bind at once; no dropped marker to
	// wait for.
	return acquisition{epoch: got.ModifyIndex, sent: sent, bindAt: time.Now(), broke: true}, true, nil
}

func (e *Election) sessionAlive(ctx context.Context, sess string) (bool, error) {
	rctx, cancel := e.reqCtx(ctx)
	defer cancel()
	info, _, err := e.c.Session().Info(sess, (&api.QueryOptions{}).WithContext(rctx))
	if err != nil {
		return false, err
	}
	return info != nil, nil
}

// confirmResult is one renewal of the holder's lease.
type confirmResult struct {
	sent time.Time
	mine bool
	why  string // when not mine
	err  error
}

// hold keeps the lock: it waits until bindAt, emits Bind, and confirms the
// lock every ConfirmInterval. The lease deadline is the send time of the
// last successful confirmation plus T_fence, and it is checked first after
// every wake-up, so a process that was paused drops before doing anything
// else. It returns the hold-off after a step-down.
func (e *Election) hold(ctx context.Context, sess string, acq acquisition, emit func(Event) error) time.Duration {
	t := e.cfg.Timing
	deadline := acq.sent.Add(t.TFence)
	bound := false
	results := make(chan confirmResult, 1)
	inflight := false
	var renewals uint64
	// After answers that say Consul is overloaded (429, 5xx) renewals
	// back off, but the last one before the deadline is always tried.
	var overloads int
	var nextRenew time.Time
	// Confirmations outlive an early return at most by RequestTimeout;
	// their results go to the buffered channel and are dropped.
	cctx, cancelConfirms := context.WithCancel(context.Background())
	defer cancelConfirms()

	deadlineT := time.NewTimer(time.Until(deadline))
	defer deadlineT.Stop()
	bindT := time.NewTimer(time.Until(acq.bindAt))
	defer bindT.Stop()
	tick := time.NewTicker(t.ConfirmInterval)
	defer tick.Stop()
	// While waiting out T_wait, watch for the predecessor's dropped marker.
	var early <-chan struct{}
	if !acq.clean && acq.pred != "" && time.Now().Before(acq.bindAt) {
		ch := make(chan struct{})
		early = ch
		go e.watchDropped(cctx, acq.pred, ch)
	}

	// end leaves the term; it reports whether the VIP is known to be
	// gone after a bind, which a clean release may then say.
	end := func(reason string) (clean bool) {
		kind := Lost
		if bound {
			kind = MustDrop
		}
		lvl := slog.LevelWarn // a term lost
		if reason == "step-down" || reason == "stopping" {
			lvl = slog.LevelInfo // asked for
		}
		e.log.Log(cctx, lvl, "leaving leadership", "reason", reason, "epoch", acq.epoch, "had_vip", bound)
		err := emit(Event{Kind: kind, Epoch: acq.epoch, Reason: reason, Time: time.Now()})
		e.setSnap(func(s *Snapshot) {
			s.Phase, s.Deadline, s.Eligible, s.Ineligible = PhaseContending, time.Time{}, false, "its term ended"
		})
		if err != nil {
			e.log.Error("the VIP may not have been dropped: the next holder will wait out t_wait", "err", err)
			return false
		}
		if bound {
			e.markDropped(sess, acq.epoch)
		}
		return bound
	}
	bind := func(why string) {
		bound = true
		e.setSnap(func(s *Snapshot) { s.Phase = PhaseHolding })
		e.log.Info("bind the VIP", "epoch", acq.epoch, "why", why)
		e.emitLogged(emit, Event{Kind: Bind, Epoch: acq.epoch, Time: time.Now(), Deadline: deadline})
	}
	for {
		// The deadline comes before anything else.
		if now := time.Now(); !now.Before(deadline) {
			end(fmt.Sprintf("lease expired: no confirmation sent in the last %s", t.TFence))
			e.release(sess, acq.epoch, false)
			return 0
		}
		select {
		case <-deadlineT.C:
			// Handled at the top of the loop.
		case <-early:
			early = nil
			if !bound && time.Now().Before(deadline) {
				bind("the previous holder dropped the VIP")
			}
		case <-bindT.C:
			if bound || !time.Now().Before(deadline) {
				continue // bound early, or expired while waiting: the top of the loop drops
			}
			if acq.broke {
				bind("broke the lock of a holder whose lease ran out")
			} else {
				bind("t_wait passed")
			}
		case <-tick.C:
			if !inflight && !time.Now().Before(nextRenew) {
				inflight = true
				renewals++
				go e.renew(cctx, sess, acq.epoch, renewals, results)
			}
		case r := <-results:
			inflight = false
			if r.err != nil {
				overloads = nextOverload(overloads, r.err)
				nextRenew = renewBackoff(overloads, deadline, t)
				e.log.Debug("renewing the lease failed", "err", r.err, "deadline_in", time.Until(deadline).Round(time.Millisecond),
					"next_in", time.Until(nextRenew).Round(time.Millisecond))
				continue
			}
			overloads, nextRenew = 0, time.Time{}
			if !r.mine {
				end(r.why)
				return 0
			}
			deadline = r.sent.Add(t.TFence)
			deadlineT.Reset(time.Until(deadline))
			e.setSnap(func(s *Snapshot) { s.LastConfirm, s.Deadline = r.sent, deadline })
			if bound {
				e.emitLogged(emit, Event{Kind: Renewed, Epoch: acq.epoch, Time: time.Now(), Deadline: deadline})
			}
		case req := <-e.stepDown:
			if req.epoch != acq.epoch {
				req.done <- ErrNotHolding // about an earlier term
				continue
			}
			clean := end("step-down")
			err := e.release(sess, acq.epoch, clean)
			req.done <- err
			return req.holdOff
		case <-ctx.Done():
			clean := end("stopping")
			e.release(sess, acq.epoch, clean)
			return 0
		}
	}
}

// renew extends the holder's lease with a Raft write that others can see:
// one transaction that succeeds only while the leader key is exactly as
// this term acquired it (same index, so held by this session, not released,
// deleted, written over or broken), and then writes the lease record. A
// standby that sees no newer lease record for T_wait may break the lock
// (contend); a renewal processed after that fails here, and the holder drops.
// The renewal is the holder's only confirmation: a write proves the lock
// and the leader's authority at once (one request, not a read and a write).
func (e *Election) renew(ctx context.Context, sess string, epoch, n uint64, out chan<- confirmResult) {
	rctx, cancel := context.WithTimeout(ctx, e.cfg.Timing.RequestTimeout)
	defer cancel()
	v := leaderValue{Node: e.cfg.Node, Epoch: epoch, Session: sess, Renewal: n}
	ops := api.KVTxnOps{
		{Verb: api.KVCheckIndex, Key: e.cfg.Key, Index: epoch},
		{Verb: api.KVCheckSession, Key: e.cfg.Key, Session: sess},
		{Verb: api.KVSet, Key: e.leaseKey(), Value: v.encode()},
	}
	sent := time.Now()
	ok, resp, _, err := e.c.KV().Txn(ops, (&api.QueryOptions{}).WithContext(rctx))
	r := confirmResult{sent: sent, err: err}
	switch {
	case err != nil:
	case !ok:
		what := "the transaction was refused"
		if resp != nil && len(resp.Errors) > 0 {
			what = resp.Errors[0].What
		}
		r.why = fmt.Sprintf("lost the lock: the leader key is no longer as epoch %d acquired it (%s)", epoch, what)
	default:
		r.mine = true
	}
	out <- r
}

// nextOverload counts answers in a row that say Consul is overloaded or
// has no leader (429, 5xx); any other failure (a timeout, a refused
// connection) resets the count: those are not made better by waiting.
func nextOverload(n int, err error) int {
	var se api.StatusError
	if errors.As(err, &se) && (se.Code == 429 || se.Code >= 500) {
		return n + 1
	}
	return 0
}

// renewBackoff is when the next renewal may go after n overload answers:
// retry.Backoff(n) from now, but never so late that the renewal could not
// be answered before the lease deadline (two request timeouts before it).
// Zero n: at once (every confirm interval).
func renewBackoff(n int, deadline time.Time, t Timing) time.Time {
	if n == 0 {
		return time.Time{}
	}
	now := time.Now()
	next := now.Add(retry.Backoff(n))
	if latest := deadline.Add(-2 * t.RequestTimeout); next.After(latest) {
		next = latest
	}
	if next.Before(now) {
		return now
	}
	return next
}

// leaseKey holds the holder's lease record, renewed every ConfirmInterval.
func (e *Election) leaseKey() string { return e.cfg.Key + ".lease" }

// droppedKey holds the last dropped marker.
func (e *Election) droppedKey() string { return e.cfg.Key + ".dropped" }

// markDropped tells a successor that this term, which had bound the VIP,
// has dropped it, however it ended: a successor that knows this term came
// just before its own binds at once instead of after T_wait.
func (e *Election) markDropped(sess string, epoch uint64) {
	ctx, cancel := context.WithTimeout(context.Background(), e.cfg.Timing.RequestTimeout)
	defer cancel()
	// The marker has the leader value's form: the term's node, epoch and session.
	v := leaderValue{Node: e.cfg.Node, Epoch: epoch, Session: sess}
	if _, err := e.c.KV().Put(&api.KVPair{Key: e.droppedKey(), Value: v.encode()}, (&api.WriteOptions{}).WithContext(ctx)); err != nil {
		e.log.Debug("writing the dropped marker", "err", err)
	}
}

// watchDropped closes found when the dropped marker names session pred.
// Markers are only ever written after the drop and name one session, so
// even a stale read that shows it is true.
func (e *Election) watchDropped(ctx context.Context, pred string, found chan<- struct{}) {
	watch(ctx, e.cfg.Timing.RequestTimeout, nil, func(q *api.QueryOptions) (*api.QueryMeta, bool, error) {
		pair, meta, err := e.c.KV().Get(e.droppedKey(), q)
		if err != nil {
			return nil, false, err
		}
		if pair != nil && parseValue(pair.Value).Session == pred {
			close(found)
			return meta, true, nil
		}
		return meta, false, nil
	}, nil)
}

// release gives up the lock. clean says the VIP was bound and has been
// dropped, so the next holder need not wait.
func (e *Election) release(sess string, epoch uint64, clean bool) error {
	ctx, cancel := context.WithTimeout(context.Background(), e.cfg.Timing.RequestTimeout)
	defer cancel()
	v := leaderValue{Node: e.cfg.Node, Released: clean, Epoch: epoch, Session: sess}
	ok, _, err := e.c.KV().Release(&api.KVPair{Key: e.cfg.Key, Value: v.encode(), Session: sess}, (&api.WriteOptions{}).WithContext(ctx))
	if err != nil {
		return fmt.Errorf("releasing %s: %w", e.cfg.Key, err)
	}
	if !ok {
		return fmt.Errorf("releasing %s: not held by this session", e.cfg.Key)
	}
	return nil
}

// sessionName names this node's election sessions, so that a clean-up
// after a crash can find them.
func sessionName(node string) string { return "driftgate " + node }

// ReleaseAbandoned is for after the daemon died (systemd's ExecStopPost, or
// start-up): if the leader key is still held by a session of this node's
// daemon on this Consul agent, it releases the key and destroys the session,
// so a standby need not wait for the heartbeat check to fence it. clean
// may be true only if the dead daemon had bound the VIP (it was found on
// the interface) and it has since been removed: then no node holds the VIP
// and the next holder may bind at once. It reports whether it released.
func ReleaseAbandoned(ctx context.Context, c *api.Client, key, node string, clean bool) (bool, error) {
	q := (&api.QueryOptions{RequireConsistent: true}).WithContext(ctx)
	pair, _, err := c.KV().Get(key, q)
	if err != nil {
		return false, fmt.Errorf("reading %s: %w", key, err)
	}
	if pair == nil || pair.Session == "" {
		return false, nil
	}
	info, _, err := c.Session().Info(pair.Session, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return false, fmt.Errorf("reading session %s: %w", pair.Session, err)
	}
	self, err := c.Agent().NodeName()
	if err != nil {
		return false, fmt.Errorf("asking the local agent its node name: %w", err)
	}
	if info == nil || info.Name != sessionName(node) || info.Node != self {
		return false, nil // another node's, or already gone
	}
	v := leaderValue{Node: node, Released: clean, Epoch: pair.ModifyIndex, Session: pair.Session}
	ok, _, err := c.KV().Release(&api.KVPair{Key: key, Value: v.encode(), Session: pair.Session}, (&api.WriteOptions{}).WithContext(ctx))
	if err != nil {
		return false, fmt.Errorf("releasing %s: %w", key, err)
	}
	if _, err := c.Session().Destroy(pair.Session, (&api.WriteOptions{}).WithContext(ctx)); err != nil {
		return ok, fmt.Errorf("destroying session %s: %w", pair.Session, err)
	}
	return ok, nil
}
