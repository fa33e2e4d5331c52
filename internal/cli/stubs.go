package cli

import (
	"context"
	"errors"
)

func (a *App) mission(ctx context.Context, args []string) error  { return errors.New("todo") }
func (a *App) drone(ctx context.Context, args []string) error    { return errors.New("todo") }
func (a *App) simulate(ctx context.Context, args []string) error { return errors.New("todo") }
