// Command report turns the JUnit files of upstream's e2e.test, one per
// service proxy, into the Markdown table of docs/conformance: one row per
// test that ran under at least one proxy, one column per proxy (passed,
// failed, skipped with the reason), totals per proxy.
//
//	go run ./e2e/node/report -title T "kube-proxy ipvs=a/junit_01.xml" "nftvs=b/junit_01.xml"
//
// A proxy's run may come in several JUnit files (NAME=A,B: one e2e.test
// run per part of the selection); they are merged, a later file's result
// for a test winning over an earlier one's.
//
//	go run ./e2e/node/report -verdicts a/junit_01.xml b/junit_01.xml
//
// prints instead, one per line as a regular expression, the tests these
// files (merged) gave a verdict (passed, failed, skipped by the test
// itself; not a run stopped while the test ran): the skip list of a run
// that resumes a part where its budget stopped it.
package main

import (
	"encoding/xml"
	"flag"
	"fmt"
	"os"
	"regexp"
	"sort"
	"strings"
)

type testcase struct {
	Name    string  `xml:"name,attr"`
	Status  string  `xml:"status,attr"`
	Time    float64 `xml:"time,attr"`
	Skipped *struct {
		Message string `xml:"message,attr"`
	} `xml:"skipped"`
	Failure *struct {
		Message string `xml:"message,attr"`
		Type    string `xml:"type,attr"`
		Text    string `xml:",chardata"`
	} `xml:"failure"`
	Error *struct {
		Message string `xml:"message,attr"`
		Text    string `xml:",chardata"`
	} `xml:"error"`
}

type suites struct {
	Suites []struct {
		Cases []testcase `xml:"testcase"`
	} `xml:"testsuite"`
}

// result of one test under one proxy.
type result struct {
	status, detail string
	secs           float64
}

func load(path string) (map[string]result, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var s suites
	if err := xml.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	out := map[string]result{}
	for _, su := range s.Suites {
		for _, c := range su.Cases {
			name := strings.TrimSpace(strings.TrimPrefix(c.Name, "[It]"))
			if !strings.HasPrefix(name, "[sig-") {
				continue // suite set-up and tear-down nodes
			}
			r := result{status: c.Status, secs: c.Time}
			switch {
			case c.Status == "interrupted" || c.Status == "timedout":
				// The run was stopped (its time budget, or by hand) while
				// this test ran: no verdict.
				r.status, r.detail = "interrupted", "run stopped while it ran"
			case c.Failure != nil:
				r.status, r.detail = "failed", firstLine(or(c.Failure.Message, failedLine(c.Failure.Text)))
			case c.Error != nil:
				r.status, r.detail = "failed", firstLine(or(c.Error.Message, failedLine(c.Error.Text)))
			case c.Skipped != nil:
				r.status, r.detail = "skipped", strings.TrimPrefix(firstLine(c.Skipped.Message), "skipped - ")
				if r.detail == "skipped" || r.detail == "" {
					continue // not selected (focus/skip): not part of the run
				}
			}
			if r.status == "" {
				r.status = "passed"
			}
			out[name] = r
		}
	}
	return out, nil
}

func or(a, b string) string {
	if strings.TrimSpace(a) != "" {
		return a
	}
	return b
}

// failedLine is ginkgo's own summary in a failure's text: the line after
// "[FAILED]" (or the text's first line).
func failedLine(s string) string {
	if i := strings.Index(s, "[FAILED] "); i >= 0 {
		return strings.TrimPrefix(s[i:], "[FAILED] ")
	}
	return s
}

func firstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	if len(s) > 160 {
		s = s[:157] + "..."
	}
	return strings.ReplaceAll(s, "|", "\\|")
}

func cell(r result, ok bool) string {
	if !ok {
		return "not run"
	}
	switch r.status {
	case "passed":
		return fmt.Sprintf("passed (%.0f s)", r.secs)
	case "failed":
		return "**failed**: " + r.detail
	case "skipped":
		return "skipped: " + r.detail
	case "interrupted":
		return "not finished: " + r.detail
	}
	return r.status + " " + r.detail
}

func main() {
	title := flag.String("title", "", "heading")
	verdicts := flag.Bool("verdicts", false, "print the tests the JUnit files given gave a verdict, as regular expressions")
	butFailed := flag.Bool("but-failed", false, "with -verdicts: leave out the failed tests (to run them again)")
	flag.Parse()
	if *verdicts {
		printVerdicts(flag.Args(), *butFailed)
		return
	}
	var names []string
	var runs []map[string]result
	for _, a := range flag.Args() {
		name, path, ok := strings.Cut(a, "=")
		if !ok {
			fmt.Fprintln(os.Stderr, "usage: report [-title T] NAME=JUNIT...")
			os.Exit(2)
		}
		r := map[string]result{}
		for _, p := range strings.Split(path, ",") {
			part, err := load(p)
			if err != nil {
				fmt.Fprintln(os.Stderr, "report:", err)
				os.Exit(1)
			}
			for t, x := range part {
				r[t] = x
			}
		}
		names, runs = append(names, name), append(runs, r)
	}
	all := map[string]bool{}
	for _, r := range runs {
		for t := range r {
			all[t] = true
		}
	}
	tests := make([]string, 0, len(all))
	for t := range all {
		tests = append(tests, t)
	}
	sort.Strings(tests)
	if *title != "" {
		fmt.Printf("## %s\n\n", *title)
	}
	// "not run": tests another proxy's run reached and this one's did not
	// (its time budget ran out first).
	fmt.Print("| proxy | passed | failed | skipped | not finished | not run |\n|---|---|---|---|---|---|\n")
	for i, r := range runs {
		n := map[string]int{}
		for _, x := range r {
			n[x.status]++
		}
		fmt.Printf("| %s | %d | %d | %d | %d | %d |\n", names[i], n["passed"], n["failed"], n["skipped"], n["interrupted"], len(tests)-len(r))
	}
	fmt.Printf("\n| test | %s |\n|---|%s\n", strings.Join(names, " | "), strings.Repeat("---|", len(names)))
	for _, t := range tests {
		row := []string{strings.ReplaceAll(t, "|", "\\|")}
		for _, r := range runs {
			x, ok := r[t]
			row = append(row, cell(x, ok))
		}
		fmt.Printf("| %s |\n", strings.Join(row, " | "))
	}
}

// printVerdicts prints verdicts(paths, butFailed), one per line.
func printVerdicts(paths []string, butFailed bool) {
	out, err := verdicts(paths, butFailed)
	if err != nil {
		fmt.Fprintln(os.Stderr, "report:", err)
		os.Exit(1)
	}
	for _, t := range out {
		fmt.Println(t)
	}
}

// verdicts are the tests that the JUnit files (merged, a later one
// winning) gave a verdict (but a failure, with butFailed), quoted as
// regular expressions and sorted.
func verdicts(paths []string, butFailed bool) ([]string, error) {
	merged := map[string]result{}
	for _, p := range paths {
		part, err := load(p)
		if err != nil {
			return nil, err
		}
		for t, x := range part {
			merged[t] = x
		}
	}
	var out []string
	for t, x := range merged {
		if x.status != "interrupted" && (!butFailed || x.status != "failed") {
			out = append(out, regexp.QuoteMeta(t))
		}
	}
	sort.Strings(out)
	return out, nil
}
