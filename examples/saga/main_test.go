package main

import (
	"bytes"
	"context"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestCompensationRunsInReverseOrderOnce(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	depot := NewDepot()
	var out bytes.Buffer
	if err := runDepot(ctx, &out, depot); err != nil {
		t.Fatalf("run: %v\noutput so far:\n%s", err, out.String())
	}

	var booked, declined []string
	for _, line := range depot.Log() {
		switch {
		case strings.HasPrefix(line, "booking-1: "):
			booked = append(booked, strings.Fields(line)[1])
		case strings.HasPrefix(line, "booking-2: "):
			declined = append(declined, strings.Fields(line)[1])
		}
	}
	// The successful booking runs its three steps and no undo.
	if want := []string{ReservePad, BookTechnician, ChargeCard}; !slices.Equal(booked, want) {
		t.Errorf("booking-1 activities %v, want %v", booked, want)
	}
	// The declined booking undoes its two completed steps, newest first,
	// each exactly once.
	want := []string{ReservePad, BookTechnician, ChargeCard, CancelTechnician, ReleasePad}
	if !slices.Equal(declined, want) {
		t.Errorf("booking-2 activities %v, want %v", declined, want)
	}

	// The record in the output lists the same undos in the same order.
	got := out.String()
	tech := strings.Index(got, `"step": "book-technician"`)
	pad := strings.Index(got, `"step": "reserve-pad"`)
	if tech < 0 || pad < 0 || tech > pad || strings.Count(got, `"status": "compensated"`) != 2 {
		t.Errorf("compensation record is not book-technician then reserve-pad, both compensated:\n%s", got)
	}
	if !strings.Contains(got, "booking-1: Booked\n") || !strings.Contains(got, "booking-2: Failed\n") {
		t.Errorf("output lacks the two outcomes:\n%s", got)
	}
}

func TestRun(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var out bytes.Buffer
	if err := run(ctx, &out); err != nil {
		t.Fatalf("run: %v\n%s", err, out.String())
	}
}
