package agent

import (
	"encoding/json"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"testing"
)

// exportedMetrics are the metric names the agent exports: its collector's
// (http.go, d("name", …)), the takeover histogram and the build info.
func exportedMetrics(t *testing.T) []string {
	t.Helper()
	src, err := os.ReadFile("http.go")
	if err != nil {
		t.Fatal(err)
	}
	names := []string{"driftgate_takeover_seconds", "driftgate_build_info"}
	for _, m := range regexp.MustCompile(`\bd\("([a-z_]+)"`).FindAllSubmatch(src, -1) {
		names = append(names, "driftgate_"+string(m[1]))
	}
	if len(names) < 20 {
		t.Fatalf("found only %d metric names in http.go: the pattern no longer matches", len(names))
	}
	return names
}

// TestMonitoring: the shipped dashboard and alert rules name only metrics
// the agent exports, and the rules pass promtool's check and their own
// unit tests (packaging/monitoring/driftgate-alerts.test.yml).
func TestMonitoring(t *testing.T) {
	known := exportedMetrics(t)
	metric := regexp.MustCompile(`\bdriftgate_[a-z_]+`)
	check := func(file, text string) {
		for _, n := range metric.FindAllString(text, -1) {
			if !slices.Contains(known, n) {
				t.Errorf("%s uses %s, which the agent does not export", file, n)
			}
		}
	}
	const dir = "../../packaging/monitoring/"
	b, err := os.ReadFile(dir + "driftgate-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Title   string
			Targets []struct{ Expr string }
		}
	}
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatalf("the dashboard is not JSON: %v", err)
	}
	if len(dash.Panels) == 0 {
		t.Fatal("the dashboard has no panels")
	}
	for _, p := range dash.Panels {
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			check("the dashboard's panel "+p.Title, tg.Expr)
		}
	}
	rules, err := os.ReadFile(dir + "driftgate-alerts.yml")
	if err != nil {
		t.Fatal(err)
	}
	check("driftgate-alerts.yml", string(rules))

	promtool, err := exec.LookPath("promtool")
	if err != nil {
		if os.Getenv("DRIFTGATE_REQUIRE_PRIVILEGED") == "1" {
			t.Fatal("promtool not found (apt-get install prometheus; make deps installs it)")
		}
		t.Skip("promtool not found (apt-get install prometheus): the rules are not checked")
	}
	for _, args := range [][]string{{"check", "rules", "driftgate-alerts.yml"}, {"test", "rules", "driftgate-alerts.test.yml"}} {
		cmd := exec.Command(promtool, args...)
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("promtool %v: %v\n%s", args, err, out)
		}
	}
}
