package mqtt

import "net/url"

// ConnectedServer is the server of the connection that is up, nil when none is.
func (c *Client) ConnectedServer() *url.URL {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.conn == nil || !c.conn.up || c.conn.ctx.Err() != nil {
		return nil
	}
	return c.conn.server
}
