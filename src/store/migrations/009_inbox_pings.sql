-- Notifications without a payload ("pings": an R4 rest-hook Subscription with no channel.payload) are
-- caught up by a search on the source since the previous ping that was done. Finding that one must not
-- scan the whole inbox: index just the finished pings, per source.
CREATE INDEX inbox_ping_done_idx ON inbox (source_id, received_at) WHERE kind = 'ping' AND state = 'done';
