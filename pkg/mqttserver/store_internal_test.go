package mqttserver

import (
	"encoding/json"
	"path/filepath"
	"testing"

	"github.com/mochi-mqtt/server/v2/hooks/storage"
	"github.com/mochi-mqtt/server/v2/packets"
	"go.etcd.io/bbolt"
)

func testDB(t *testing.T) *bbolt.DB {
	t.Helper()
	db, err := bbolt.Open(filepath.Join(t.TempDir(), "store.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	err = db.Update(func(tx *bbolt.Tx) error {
		for _, name := range [][]byte{bucketSessions, bucketSubs, bucketInflight, bucketRetained} {
			if _, err := tx.CreateBucket(name); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return db
}

func record(t *testing.T, client string, id uint16, payload string) []byte {
	t.Helper()
	v, err := json.Marshal(messageRecord(client, packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, PacketID: id, TopicName: "t", Payload: []byte(payload),
	}))
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// Dropping a session leaves alone the sessions whose ids it is a prefix of.
func TestDropSessionKeepsOthers(t *testing.T) {
	db := testDB(t)
	for _, id := range []string{"gw", "gw1", "gw\x00"} {
		err := db.Update(func(tx *bbolt.Tx) error {
			tx.Bucket(bucketSessions).Put([]byte(id), []byte("{}"))
			tx.Bucket(bucketSubs).Put(append(clientKey(id), "wireguard/+/all"...), []byte("{}"))
			return tx.Bucket(bucketInflight).Put(inflightKey(id, 1), record(t, id, 1, id))
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := db.Update(func(tx *bbolt.Tx) error { return dropSession(tx, []byte("gw")) }); err != nil {
		t.Fatal(err)
	}
	db.View(func(tx *bbolt.Tx) error {
		for _, name := range [][]byte{bucketSessions, bucketSubs, bucketInflight} {
			if n := tx.Bucket(name).Stats().KeyN; n != 2 {
				t.Errorf("%s: %d records left, want 2", name, n)
			}
		}
		if tx.Bucket(bucketSessions).Get([]byte("gw")) != nil {
			t.Error("session gw not dropped")
		}
		return nil
	})
}

// Stranded records left by a killed server become in-flight messages under
// packet ids their sessions do not use.
func TestSettleStranded(t *testing.T) {
	db := testDB(t)
	err := db.Update(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bucketInflight)
		b.Put(inflightKey("gw1", 1), record(t, "gw1", 1, "a"))
		b.Put(inflightKey("gw1", 3), record(t, "gw1", 3, "b"))
		b.Put(strandedKey("gw1", 7), record(t, "gw1", 1, "c")) // its old id clashes
		b.Put(strandedKey("gw1", 8), record(t, "gw1", 9, "d"))
		b.Put(strandedKey("gw2", 9), record(t, "gw2", 5, "e"))
		return settleStranded(b)
	})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]uint16{}
	db.View(func(tx *bbolt.Tx) error {
		return tx.Bucket(bucketInflight).ForEach(func(k, v []byte) error {
			var m storage.Message
			if err := json.Unmarshal(v, &m); err != nil {
				t.Fatal(err)
			}
			if string(k) != string(inflightKey(m.Client, m.PacketID)) {
				t.Errorf("record %q under key %q", m.Payload, k)
			}
			got[m.Client+"/"+string(m.Payload)] = m.PacketID
			return nil
		})
	})
	want := map[string]uint16{"gw1/a": 1, "gw1/b": 3, "gw1/c": 2, "gw1/d": 4, "gw2/e": 1}
	if len(got) != len(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	for k, id := range want {
		if got[k] != id {
			t.Errorf("%s: packet id %d, want %d", k, got[k], id)
		}
	}
}
