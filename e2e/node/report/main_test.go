package main

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"testing"
)

// A resumed part skips what an earlier run of it decided, and runs again
// what the budget stopped, including a test a later file stopped.
func TestVerdicts(t *testing.T) {
	dir := t.TempDir()
	write := func(name, cases string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(`<testsuites><testsuite>`+cases+`</testsuite></testsuites>`), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	first := write("first.xml", `
<testcase name="[It] [sig-network] A passes [Conformance]" status="passed" time="3"></testcase>
<testcase name="[It] [sig-network] B fails (x)" status="failed"><failure message="boom"></failure></testcase>
<testcase name="[It] [sig-network] C skips itself" status="skipped"><skipped message="skipped - needs 6 nodes"></skipped></testcase>
<testcase name="[It] [sig-network] D not selected" status="skipped"><skipped message="skipped"></skipped></testcase>
<testcase name="[It] [sig-network] E stopped" status="interrupted"></testcase>
<testcase name="[SynchronizedBeforeSuite]" status="passed"></testcase>`)
	got, err := verdicts([]string{first}, false)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{`\[sig-network\] A passes \[Conformance\]`, `\[sig-network\] B fails \(x\)`, `\[sig-network\] C skips itself`}
	if !slices.Equal(got, want) {
		t.Errorf("verdicts = %q, want %q", got, want)
	}
	if !regexp.MustCompile(got[1]).MatchString("[sig-network] B fails (x)") {
		t.Errorf("%s does not match its own test", got[1])
	}
	// The resume decided E; a later run stopped while A ran again.
	second := write("second.xml", `
<testcase name="[It] [sig-network] E stopped" status="passed" time="9"></testcase>
<testcase name="[It] [sig-network] A passes [Conformance]" status="interrupted"></testcase>`)
	got, _ = verdicts([]string{first, second}, false)
	want = []string{`\[sig-network\] B fails \(x\)`, `\[sig-network\] C skips itself`, `\[sig-network\] E stopped`}
	if !slices.Equal(got, want) {
		t.Errorf("verdicts after a resume = %q, want %q", got, want)
	}
	// Failures to run again (a harness fault fixed since).
	got, _ = verdicts([]string{first, second}, true)
	want = []string{`\[sig-network\] C skips itself`, `\[sig-network\] E stopped`}
	if !slices.Equal(got, want) {
		t.Errorf("verdicts but failed = %q, want %q", got, want)
	}
}
