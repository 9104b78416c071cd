package consensus

import (
	"context"
	"fmt"
	"log/slog"
)

// raftLogger adapts slog to raft.Logger. raft only calls Fatal/Panic for
// violated internal invariants and relies on them not returning, so those
// panic after logging (as raft's own default logger does).
type raftLogger struct{ lg *slog.Logger }

func (l raftLogger) log(level slog.Level, msg string) {
	l.lg.Log(context.Background(), level, msg, "subsystem", "raft")
}

func (l raftLogger) Debug(v ...any) { l.log(slog.LevelDebug, fmt.Sprint(v...)) }
func (l raftLogger) Debugf(format string, v ...any) {
	l.log(slog.LevelDebug, fmt.Sprintf(format, v...))
}
func (l raftLogger) Info(v ...any)                 { l.log(slog.LevelInfo, fmt.Sprint(v...)) }
func (l raftLogger) Infof(format string, v ...any) { l.log(slog.LevelInfo, fmt.Sprintf(format, v...)) }
func (l raftLogger) Warning(v ...any)              { l.log(slog.LevelWarn, fmt.Sprint(v...)) }
func (l raftLogger) Warningf(format string, v ...any) {
	l.log(slog.LevelWarn, fmt.Sprintf(format, v...))
}
func (l raftLogger) Error(v ...any) { l.log(slog.LevelError, fmt.Sprint(v...)) }
func (l raftLogger) Errorf(format string, v ...any) {
	l.log(slog.LevelError, fmt.Sprintf(format, v...))
}
func (l raftLogger) Fatal(v ...any)                 { l.fail(fmt.Sprint(v...)) }
func (l raftLogger) Fatalf(format string, v ...any) { l.fail(fmt.Sprintf(format, v...)) }
func (l raftLogger) Panic(v ...any)                 { l.fail(fmt.Sprint(v...)) }
func (l raftLogger) Panicf(format string, v ...any) { l.fail(fmt.Sprintf(format, v...)) }

func (l raftLogger) fail(msg string) {
	l.log(slog.LevelError, msg)
	panic("raft: " + msg)
}
