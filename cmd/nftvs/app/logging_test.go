package app

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// --logging-format=json logs JSON lines, as kube-proxy does
// (component-base's logs/json registered). Before, nftvs logged text with
// a warning. Logging is global: Main runs in a child process.
func TestJSONLogging(t *testing.T) {
	if args := os.Getenv("NFTVS_TEST_MAIN_ARGS"); args != "" {
		os.Exit(Main(strings.Fields(args), os.Stdout, os.Stderr))
	}
	out := filepath.Join(t.TempDir(), "config.yaml")
	cmd := exec.Command(os.Args[0], "-test.run=^TestJSONLogging$")
	cmd.Env = append(os.Environ(), "NFTVS_TEST_MAIN_ARGS=--logging-format=json --log-json-split-stream=false --write-config-to="+out)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("nftvs --logging-format=json: %v\n%s", err, stderr.String())
	}
	var wrote bool
	for _, line := range strings.Split(strings.TrimSpace(stderr.String()), "\n") {
		var entry map[string]any
		if err := json.Unmarshal([]byte(line), &entry); err != nil {
			t.Fatalf("not a JSON line: %q (%v)", line, err)
		}
		wrote = wrote || entry["msg"] == "Wrote configuration"
	}
	if !wrote {
		t.Errorf("no JSON entry for the written configuration in %q", stderr.String())
	}
}
