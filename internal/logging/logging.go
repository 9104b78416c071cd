// Package logging builds a process's slog.Logger from etcd's logging
// flags: --log-level, --log-format (json or console), --log-outputs
// (stderr, stdout or files) and --enable-log-rotation with
// --log-rotation-config-json (a single file, rotated by size and age).
package logging

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"sync"

	"gopkg.in/natefinch/lumberjack.v2"
)

// Outputs with a meaning of their own; any other output is a file path.
const (
	// OutputDefault is etcd's default: stderr (etcd also means stderr
	// unless it runs under systemd, whose journal receives stderr anyway).
	OutputDefault = "default"
	OutputStderr  = "stderr"
	OutputStdout  = "stdout"
	// OutputJournal is etcd's journald output; concord writes stderr,
	// which systemd puts in the journal.
	OutputJournal = "systemd/journal"
)

// Formats of --log-format.
const (
	FormatJSON    = "json"
	FormatConsole = "console"
)

// ErrInvalid is wrapped by every Validate error.
var ErrInvalid = errors.New("logging: invalid config")

// Config is a process's logging.
type Config struct {
	Level slog.Level
	// Format is FormatJSON (the default when empty) or FormatConsole.
	Format string
	// Outputs are where every record goes; none means OutputDefault.
	Outputs []string
	// Rotate rotates the one file among Outputs as Rotation says.
	Rotate   bool
	Rotation Rotation
}

// Rotation is etcd's --log-rotation-config-json (lumberjack's settings).
type Rotation struct {
	// MaxSize is the size in megabytes at which the file is rotated.
	MaxSize int `json:"maxsize"`
	// MaxAge is how many days old rotated files are kept (0: forever).
	MaxAge int `json:"maxage"`
	// MaxBackups is how many rotated files are kept (0: all).
	MaxBackups int  `json:"maxbackups"`
	LocalTime  bool `json:"localtime"`
	Compress   bool `json:"compress"`
}

// DefaultRotationJSON is etcd's default --log-rotation-config-json.
const DefaultRotationJSON = `{"maxsize": 100, "maxage": 0, "maxbackups": 0, "localtime": false, "compress": false}`

// ParseRotation reads --log-rotation-config-json, with etcd's errors.
func ParseRotation(s string) (Rotation, error) {
	var r Rotation
	if err := json.Unmarshal([]byte(s), &r); err != nil {
		var syntax *json.SyntaxError
		var typ *json.UnmarshalTypeError
		switch {
		case errors.As(err, &syntax):
			return r, fmt.Errorf("%w: improperly formatted log rotation config: %v", ErrInvalid, err)
		case errors.As(err, &typ):
			return r, fmt.Errorf("%w: invalid log rotation config: %v", ErrInvalid, err)
		}
		return r, fmt.Errorf("%w: fail to unmarshal log rotation config: %v", ErrInvalid, err)
	}
	return r, nil
}

func isFile(o string) bool {
	return o != OutputDefault && o != OutputStderr && o != OutputStdout && o != OutputJournal
}

// Validate applies etcd's rules.
func (c Config) Validate() error {
	if c.Format != "" && c.Format != FormatJSON && c.Format != FormatConsole {
		return fmt.Errorf("%w: unknown log format: %s, supported values json, console", ErrInvalid, c.Format)
	}
	if len(c.Outputs) > 1 && slices.Contains(c.Outputs, OutputDefault) {
		return fmt.Errorf("%w: multi logoutput for %q is not supported yet", ErrInvalid, OutputDefault)
	}
	if c.Rotate {
		files := 0
		for _, o := range c.Outputs {
			if isFile(o) {
				files++
			}
		}
		if files != 1 {
			return fmt.Errorf("%w: log outputs for rotation must name exactly one file (found %d)", ErrInvalid, files)
		}
	}
	return nil
}

// New opens c's outputs and returns the logger writing to them, and the
// Closer of the files it opened.
func New(c Config) (*slog.Logger, io.Closer, error) {
	if err := c.Validate(); err != nil {
		return nil, nil, err
	}
	outputs := c.Outputs
	if len(outputs) == 0 {
		outputs = []string{OutputDefault}
	}
	var (
		writers []io.Writer
		closers []io.Closer
	)
	for _, o := range outputs {
		switch {
		case o == OutputStdout:
			writers = append(writers, os.Stdout)
		case !isFile(o):
			if !slices.Contains(writers, io.Writer(os.Stderr)) {
				writers = append(writers, os.Stderr)
			}
		case c.Rotate:
			l := &lumberjack.Logger{Filename: o, MaxSize: c.Rotation.MaxSize, MaxAge: c.Rotation.MaxAge,
				MaxBackups: c.Rotation.MaxBackups, LocalTime: c.Rotation.LocalTime, Compress: c.Rotation.Compress}
			writers, closers = append(writers, l), append(closers, l)
		default:
			f, err := os.OpenFile(o, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
			if err != nil {
				_ = (&closeOnce{cs: closers}).Close()
				return nil, nil, fmt.Errorf("log output: %w", err)
			}
			writers, closers = append(writers, f), append(closers, f)
		}
	}
	w := writers[0]
	if len(writers) > 1 {
		w = io.MultiWriter(writers...)
	}
	opts := &slog.HandlerOptions{Level: c.Level}
	var h slog.Handler = slog.NewJSONHandler(w, opts)
	if c.Format == FormatConsole {
		h = slog.NewTextHandler(w, opts)
	}
	return slog.New(h), &closeOnce{cs: closers}, nil
}

// closeOnce closes the files once, however often it is called.
type closeOnce struct {
	once sync.Once
	cs   []io.Closer
	err  error
}

func (c *closeOnce) Close() error {
	c.once.Do(func() {
		var errs []error
		for _, x := range c.cs {
			errs = append(errs, x.Close())
		}
		c.err = errors.Join(errs...)
	})
	return c.err
}
