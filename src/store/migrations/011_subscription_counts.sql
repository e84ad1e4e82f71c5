-- Subscriptions R5 Backport: what a source's handshakes and heartbeats report as
-- eventsSinceSubscriptionStart, and the restarts of its event numbering that they revealed.
-- A heartbeat reporting more events than were received reveals notifications that never arrived
-- (caught up like any gap); a handshake, or a heartbeat reporting fewer than the previous one did,
-- reveals that the numbering started again, so the last number recorded goes back with it.
ALTER TABLE source_subscription
  ADD COLUMN reported_events bigint,
  ADD COLUMN restarts jsonb NOT NULL DEFAULT '[]'::jsonb;   -- [{detectedAt, from, to, by}]
