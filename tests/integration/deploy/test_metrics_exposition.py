"""``GET /metrics`` is what Prometheus accepts: the live exposition of a running
orchestrator, alone and gathered from several workers, passes ``promtool check metrics``
(its parser and its lint: names, suffixes, help)."""

from __future__ import annotations

from promtools import metric_names, promtool, running, traffic

from orchestrator.cluster import merge_metrics


async def test_the_live_exposition_passes_promtool_check_metrics(tmp_path):
    async with running(tmp_path) as app:
        await traffic(app)
        text = await app.scrape()
    assert 'orchestrator_attempts_total{channel="a",outcome="not_processed"} 2.0' in text
    done = promtool("check", "metrics", stdin=text.encode())
    assert done.returncode == 0 and not (done.stdout + done.stderr).strip(), done.stdout + done.stderr


async def test_several_workers_gathered_into_one_exposition_pass_it_too(tmp_path):
    """With ``server.workers: N`` one scrape returns every worker's samples, each labelled
    ``worker``: one family per name, as the format requires."""
    async with running(tmp_path) as app:
        await traffic(app)
        one = await app.scrape()
    merged = merge_metrics([(0, one), (1, one)]).decode()
    assert 'orchestrator_attempts_total{channel="a",outcome="not_processed",worker="1"} 2.0' in merged
    assert merged.count("# TYPE orchestrator_attempts_total counter") == 1
    done = promtool("check", "metrics", stdin=merged.encode())
    assert done.returncode == 0 and not (done.stdout + done.stderr).strip(), done.stdout + done.stderr


def test_metric_names_are_read_out_of_promql():
    expr = '''sum by (channel) (rate(orchestrator_attempts_total{outcome=~"captured|x_y"}[5m]))
              / on (channel) group_left max without (instance) (orchestrator_breaker_state offset 1h) > 0.5
              and histogram_quantile(0.99, sum by (le) (rate(orchestrator_journal_commit_seconds_bucket[$__rate_interval])))
              or vector(1) unless up{job="orchestrator"} == bool 1e3  # a comment names no metric
              # nor does this one'''
    assert metric_names(expr) == {"orchestrator_attempts_total", "orchestrator_breaker_state",
                                  "orchestrator_journal_commit_seconds_bucket", "up"}
