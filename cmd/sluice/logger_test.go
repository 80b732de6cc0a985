package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

func TestNewLogger(t *testing.T) {
	t.Run("json gives JSON lines", func(t *testing.T) {
		var buf bytes.Buffer
		log, err := newLogger("json", "info", &buf)
		if err != nil {
			t.Fatal(err)
		}
		log.Info().Str("app", "shop").Msg("router started")
		log.Debug().Msg("below the level")
		var line map[string]any
		if err := json.Unmarshal(buf.Bytes(), &line); err != nil {
			t.Fatalf("not one JSON line: %q (%v)", buf.String(), err)
		}
		if line["level"] != "info" || line["message"] != "router started" || line["app"] != "shop" || line["time"] == nil {
			t.Fatalf("got %v, want level, message, app and time", line)
		}
	})

	t.Run("console off a terminal is plain text", func(t *testing.T) {
		var buf bytes.Buffer
		log, err := newLogger("console", "debug", &buf)
		if err != nil {
			t.Fatal(err)
		}
		log.Warn().Str("app", "shop").Msg("event rejected")
		got := buf.String()
		if strings.Contains(got, "\x1b[") {
			t.Fatalf("escape codes in console output to a non-terminal: %q", got)
		}
		for _, want := range []string{"WRN", "event rejected", "app=shop"} {
			if !strings.Contains(got, want) {
				t.Errorf("console output %q lacks %q", got, want)
			}
		}
		if json.Valid([]byte(got)) {
			t.Errorf("console output is JSON: %q", got)
		}
	})

	t.Run("auto off a terminal is JSON", func(t *testing.T) {
		var buf bytes.Buffer
		log, err := newLogger("auto", "info", &buf)
		if err != nil {
			t.Fatal(err)
		}
		log.Info().Msg("hello")
		if !json.Valid(bytes.TrimSpace(buf.Bytes())) {
			t.Fatalf("auto to a non-terminal is not JSON: %q", buf.String())
		}
	})

	for _, tt := range []struct{ name, format, level, want string }{
		{"bad format", "xml", "info", "--log-format"},
		{"empty format", "", "info", "--log-format"},
		{"bad level", "json", "loud", "--log-level"},
		{"empty level", "json", "", "--log-level"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := newLogger(tt.format, tt.level, &bytes.Buffer{})
			if !isUsage(err) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("newLogger(%q, %q) = %v, want a usage error about %s", tt.format, tt.level, err, tt.want)
			}
		})
	}
}
