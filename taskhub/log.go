package taskhub

import (
	"fmt"
	"log/slog"

	dtbackend "github.com/microsoft/durabletask-go/backend"
)

// Logger adapts slog to durabletask-go's printf-style logger. durabletask-go
// logs every work item at Info; those lines are demoted to Debug because at
// hundreds of work items a second they would drown everything else.
func Logger(l *slog.Logger) dtbackend.Logger { return logAdapter{l} }

type logAdapter struct{ l *slog.Logger }

func (a logAdapter) Debug(v ...any)            { a.l.Debug(fmt.Sprint(v...)) }
func (a logAdapter) Debugf(f string, v ...any) { a.l.Debug(fmt.Sprintf(f, v...)) }
func (a logAdapter) Info(v ...any)             { a.l.Debug(fmt.Sprint(v...)) }
func (a logAdapter) Infof(f string, v ...any)  { a.l.Debug(fmt.Sprintf(f, v...)) }
func (a logAdapter) Warn(v ...any)             { a.l.Warn(fmt.Sprint(v...)) }
func (a logAdapter) Warnf(f string, v ...any)  { a.l.Warn(fmt.Sprintf(f, v...)) }
func (a logAdapter) Error(v ...any)            { a.l.Error(fmt.Sprint(v...)) }
func (a logAdapter) Errorf(f string, v ...any) { a.l.Error(fmt.Sprintf(f, v...)) }
