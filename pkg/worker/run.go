package worker

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"
)

// goodbyeTimeout bounds the goodbye (connected_peers -1, status 0) and the
// MQTT disconnect when the worker stops.
const goodbyeTimeout = 5 * time.Second

// Run runs the worker until ctx ends: it serves the metrics, brings back
// the keys of the journal, connects to the bus (when Options.MQTT names a
// server) and installs keys. Call it once.
//
// When ctx ends, Run stops in order, so that no key is lost: it stops
// taking messages (keys that arrive from then on are neither queued nor
// acknowledged, so the server sends them again to the persistent session),
// installs and acknowledges the keys it has queued (for at most
// StopTimeout; what is left stays unacknowledged), publishes
// connected_peers -1 and status 0, disconnects, and returns nil.
func (w *Worker) Run(ctx context.Context) error {
	if w.o.MetricsListen != "" {
		ln, err := net.Listen("tcp", w.o.MetricsListen)
		if err != nil {
			return fmt.Errorf("worker.metrics_listen: %w", err)
		}
		srv := &http.Server{Handler: w.handler(w.o.Gatherer), ReadHeaderTimeout: 5 * time.Second, WriteTimeout: 30 * time.Second}
		served := make(chan struct{})
		go func() {
			defer close(served)
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				w.log.Error("metrics server", "err", err)
			}
		}()
		defer func() { srv.Close(); <-served }()
		w.log.Info("metrics listening", "addr", ln.Addr().String())
	}
	w.loadJournal()
	attrs := []any{"name", w.o.Name, "external", w.o.ExternalName, "domains", w.names}
	if w.journal != nil {
		attrs = append(attrs, "journal", w.journal.path)
	}
	if w.client != nil {
		attrs = append(attrs, "mqtt", w.o.MQTT.Server.Redacted(), "receive_maximum", w.o.ReceiveMaximum)
	}
	w.log.Info("worker starting", attrs...)

	// The loop and the connection outlive ctx: stopping needs both.
	loopCtx, stopLoop := context.WithCancel(context.WithoutCancel(ctx))
	defer stopLoop()
	looped := make(chan struct{})
	go func() { defer close(looped); w.loop(loopCtx) }()
	if w.client != nil {
		if err := w.client.Start(context.WithoutCancel(ctx)); err != nil {
			w.stopReceiving()
			stopLoop()
			<-looped
			return err
		}
	}
	<-ctx.Done()

	w.log.Info("stopping: taking no more keys, installing the queued ones", "queued", len(w.queue))
	w.stopReceiving()
	stopLoop()
	<-looped
	if w.client == nil {
		return nil
	}
	gctx, cancel := context.WithTimeout(context.Background(), goodbyeTimeout)
	defer cancel()
	w.goodbye(gctx)
	if err := w.client.Close(gctx); err != nil {
		w.log.Warn("MQTT disconnect", "err", err)
	}
	w.log.Info("stopped")
	return nil
}
