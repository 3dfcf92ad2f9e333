"""The markdown report: the run's JSON as prose and tables."""

from __future__ import annotations

from typing import Any

from bench.reliability.process import SR_MODEL, STYLE


def markdown(report: dict[str, Any], passed: bool) -> str:
    report = dict(report)
    errors = []
    for name in ("corpus", "schemathesis", "overload", "faults", "soak", "oversized"):
        section = report.get(name)
        if isinstance(section, dict) and "error" in section:
            errors.append(f"- **{name}** stopped with an error:\n\n```\n{section['error']}```")
            report[name] = None
    if isinstance(report.get("faults"), dict):
        report["faults"] = dict(report["faults"])
        for name, fault in list(report["faults"].items()):
            if isinstance(fault, dict) and "error" in fault:
                errors.append(f"- **fault {name}** stopped with an error:\n\n```\n"
                              f"{fault['error']}```")
                del report["faults"][name]
    lines = [f"# Reliability ({'quick' if report['quick'] else 'full'} run)", "",
             f"Machine: {report['machine']['cpu']}, {report['machine']['cores']} cores, torch "
             f"{report['machine']['torch']}; load average before: {report['load_before']}, "
             f"after: {report['load_after']}. Commit {report['commit']}. Service: `python -m "
             f"service` on 127.0.0.1, CPU, shipped models {STYLE} and {SR_MODEL}, "
             f"SERVICE_TORCH_THREADS=1 (one core computes; the other serves HTTP and runs this "
             f"load generator). Limits: "
             + ", ".join(f"{k}={v}" for k, v in report["limits"].items()) + ".", ""]
    c = report.get("corpus")
    if c:
        lines += ["## Hostile input", "",
                  f"{c['as_expected']}/{c['cases']} cases answered as expected; server 5xx: "
                  f"{c['server_5xx']}; no answer: {len(c['no_answer'])}; slowest "
                  f"{c['slowest_s']} s. Idle RSS {c['idle_rss_mib']} MiB; peak RSS of any "
                  f"refused case {c['peak_rss_refused_max_mib']} MiB "
                  f"({c['peak_rss_refused_max_case']}); of the largest allowed request "
                  f"{c['peak_rss_largest_allowed_mib']} MiB; every case within it: "
                  f"{c['rss_bounded']}.", "",
                  "| case | expected | got | s | peak RSS MiB | why |",
                  "| --- | --- | --- | ---: | ---: | --- |"]
        for r in c["rows"]:
            exp = f"{r['expected'][0]} {r['expected'][1] or ''}".strip()
            got = f"{r['got'][0]} {r['got'][1] or ''}".strip()
            mark = "" if r["ok"] else " **≠**"
            lines.append(f"| {r['name']} | {exp} | {got}{mark} | {r['seconds']} | "
                         f"{r['peak_rss_mib']} | {r['why']} |")
        lines.append("")
    s = report.get("schemathesis")
    if s:
        lines += ["## Schemathesis", ""]
        if "skipped" in s:
            lines += [s["skipped"], ""]
        else:
            lines += [f"{s['requests']} generated requests ({s['examples_per_operation']} "
                      f"examples per operation and mode); 5xx: {s['server_5xx']}; failed "
                      f"checks: {s['failures']}.", "", "| operation | mode | statuses |",
                      "| --- | --- | --- |"]
            lines += [f"| {r['operation']} | {r['mode']} | {r['statuses']}"
                      f"{' FAILED' if r['failure'] else ''} |" for r in s["operations"]]
            lines.append("")
    o = report.get("overload")
    if o:
        lines += ["## Overload", "",
                  f"{o['image']}, {o['model']}. Alone: p50 {o['latency_alone_p50_ms']} ms. "
                  f"Capacity {o['capacity_rps']} req/s ({o['capacity_clients']} closed-loop "
                  f"clients, p99 {o['capacity_closed_loop_p99_ms']} ms).", "",
                  f"Offered {o['offered_rps']} req/s (10x, Poisson) for {o['duration_s']} s; "
                  f"sent {o['sent']} ({o['achieved_send_rps']} req/s achieved): "
                  f"{o['ok']} admitted and answered 200 ({o['ok_rps']} req/s), p50 "
                  f"{o['admitted_p50_ms']} ms, p99 {o['admitted_p99_ms']} ms, max "
                  f"{o['admitted_max_ms']} ms (server side: p99 ≤ "
                  f"{o['admitted_p99_server_le_ms']} ms by its histogram; the queue limit over "
                  f"the measured capacity: ~{o['admitted_p99_bound_ms']} ms, over the "
                  f"throughput during the overload: ~"
                  f"{o['admitted_wait_at_overload_throughput_ms']} ms); "
                  f"{o['shed_429']} shed with 429 "
                  f"({o['shed_with_retry_after']} with Retry-After), p50 {o['shed_p50_ms']} ms, "
                  f"p99 {o['shed_p99_ms']} ms (server side: p99 ≤ "
                  f"{o.get('shed_p99_server_le_ms')} ms); other outcomes: {o['other']}. Statuses "
                  f"{o['statuses']}; rejections by reason {o['rejections_by_reason']}.", "",
                  f"Forward passes at capacity {o['forward_at_capacity']}, during the "
                  f"overload {o['forward_during_overload']}.", "",
                  f"RSS {o['rss_before_mib']} MiB before, peak {o['rss_peak_mib']} MiB. Queue "
                  f"drained {o['queue_drained_s']} s after the last arrival; then 20 requests: "
                  f"{o['after']['statuses']}, p50 {o['after']['p50_ms']} ms.", ""]
    f = report.get("faults")
    if f:
        lines += ["## Faults", ""]
        if "redis" in f:
            r = f["redis"]
            lines += [f"- **Redis killed and restarted** under 8 clients for {r['duration_s']} "
                      f"s (killed at {r['killed_at_s']} s, restarted at {r['restarted_at_s']} "
                      f"s): {r['requests']} requests, {r['failed']} failed; first cache hit "
                      f"{r['first_hit_after_restart_s']} s after the restart; phases "
                      f"{r['phases']}."]
        if "raising_model" in f:
            r = f["raising_model"]
            lines += [f"- **A forward that raises**: {r['requests']} requests, 16 clients, "
                      f"{r['poisoned']} poisoned; {r['failed_batches']} of {r['batches']} "
                      f"batches raised (halves retried down to single requests), holding "
                      f"{r['requests_in_failed_batches']} requests; {r['answered_500']} "
                      f"answered 500, exactly the poisoned ones: "
                      f"{r['500s_exactly_the_poisoned']}; all others 200: "
                      f"{r['others_200']}; a request after: {r['after_status']}."]
        if "disconnects" in f:
            r = f["disconnects"]
            lines += [f"- **Clients leaving in bulk**: {r['clients_leaving']} "
                      f"({r['mid_upload']} mid-upload, {r['after_upload']} after it, 256x256 "
                      f"images; {r['answered_before_leaving']} answered before they left); "
                      f"{r['disconnects_counted']} disconnects counted; idle again "
                      f"{r['seconds_to_idle']} s later: queue depth {r['queue_depth_after']}, "
                      f"in flight {r['inflight_after']}; requests of a client that stayed: "
                      f"{r['staying_clients_ok']}/{r['staying_clients']} OK (after "
                      f"{r['staying_retries_after_429']} retries on 429); RSS "
                      f"{r['rss_before_mib']} -> peak {r['rss_peak_mib']} -> "
                      f"{r['rss_after_mib']} MiB."]
        if "sigterm" in f:
            r = f["sigterm"]
            lines += [f"- **SIGTERM under load** (16 clients): exit code {r['exit_code']}; "
                      f"server log {r['server_logged']}; clients saw {r['client_outcomes']}; "
                      f"every admitted request completed: {r['every_admitted_completed']}."]
        lines.append("")
    k = report.get("soak")
    if k:
        lines += ["## Soak", "",
                  f"{k['duration_s']:g} s of mixed load ({k['clients']} closed-loop clients, "
                  f"{k['rps']} req/s: {k['mix']}). Unexpected answers: {k['unexpected'] or 0}; "
                  f"5xx: {k['server_5xx']}. RSS {k['rss_start_mib']} MiB at start, "
                  f"{k['rss_after_warmup_mib']} MiB after the {k['warmup_s']:g} s warm-up, "
                  f"{k['rss_end_mib']} MiB at the end (peak {k['rss_peak_mib']}): growth after "
                  f"warm-up {k['rss_growth_after_warmup_pct']} %.", ""]
    v = report.get("oversized")
    if v:
        lines += ["## Oversized work at the default limits", "",
                  f"The largest requests the service's default limits allow, and one as a job "
                  f"(models {STYLE}, sr_x4, sr_x8). Idle peak RSS {v['idle_peak_rss_mib']} MiB; "
                  f"the most any case added to it: {v['peak_over_idle_max_mib']} MiB (at most "
                  f"{v['max_over_idle_mib']}: {v['within_budget']}); no 5xx: {v['no_5xx']}.", "",
                  "| case | input | answer | s | peak RSS MiB | over idle MiB |",
                  "| --- | --- | --- | ---: | ---: | ---: |"]
        for r in v["rows"]:
            answer = f"{r['status']} {r['code'] or ''}".strip()
            if "progress" in r:
                answer += f" ({r['progress']['done']}/{r['progress']['total']} tiles)"
            lines.append(f"| {r['name']} | {r['input']} | {answer} | {r['seconds']} | "
                         f"{r['peak_rss_mib']} | {r['peak_over_idle_mib']} |")
        lines.append("")
    if errors:
        lines += ["## Errors", "", *errors, ""]
    lines += [f"Verdict: {'every claim held' if passed else 'NOT every claim held (see above)'}.",
              ""]
    return "\n".join(lines)
