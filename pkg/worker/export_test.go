package worker

import "context"

// AwaitConnection waits until the worker's MQTT connection is up and
// subscribed.
func (w *Worker) AwaitConnection(ctx context.Context) error { return w.client.AwaitConnection(ctx) }

// KillConnection drops the worker's MQTT connection as a crash would.
func (w *Worker) KillConnection() { w.client.Kill() }
