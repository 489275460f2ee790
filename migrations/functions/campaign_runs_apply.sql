-- Apply count changes to one run, completing it when every message has an outcome and
-- reopening it when a message goes back to the queue (replay).
CREATE OR REPLACE FUNCTION campaign_runs_apply(
    p_run_id uuid, d_total integer, d_sent integer, d_failed integer, d_skipped integer)
RETURNS void
LANGUAGE sql AS $$
    UPDATE campaign_runs r
       SET total_count = r.total_count + d_total,
           sent_count = r.sent_count + d_sent,
           failed_count = r.failed_count + d_failed,
           skipped_count = r.skipped_count + d_skipped,
           status = CASE
               WHEN r.status = 'cancelled' THEN r.status
               WHEN r.total_count + d_total > 0
                    AND r.sent_count + d_sent + r.failed_count + d_failed
                        + r.skipped_count + d_skipped >= r.total_count + d_total
                   THEN 'completed'
               ELSE 'running' END,
           finished_at = CASE
               WHEN r.status = 'cancelled' THEN r.finished_at
               WHEN r.total_count + d_total > 0
                    AND r.sent_count + d_sent + r.failed_count + d_failed
                        + r.skipped_count + d_skipped >= r.total_count + d_total
                   THEN COALESCE(r.finished_at, now())
               ELSE NULL END,
           updated_at = now()
     WHERE r.id = p_run_id
$$;
