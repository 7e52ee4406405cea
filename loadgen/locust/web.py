"""Web UI additions: an "LLM metrics" tab, LLM charts, CSV downloads and start-form validation.

Locust's web UI is a bundled React app with a fixed set of charts; its extension points are an extra tab holding a
table (``extendedTabs``/``extendedTables``, filled from ``extended_stats`` in ``/stats/requests``) and extra links
in "Download Data" (``extendedCsvFiles``). The LLM table goes in the tab; the charts (TTFT, TPOT, ITL, E2E
percentiles, tokens/s, errors/s, and beside them the server's own queued and running requests and KV-cache usage
from the level's server-metrics sampler) are a small self-contained page at ``/loadgen/charts`` (no external
scripts), linked from "Download Data"; ``/loadgen/stats`` serves the numbers as JSON and ``/loadgen/stats.csv`` as CSV.
Locust's own statistics, charts and HTML report get one entry per LLM request (response time = E2E), and the HTML
report (``--html`` or "Download Report") gets the LLM table appended.
"""

from __future__ import annotations

import copy
import csv
import io
import logging
from typing import Any

from loadgen.errors import LoadgenError

TAB_KEY = "llm-metrics"
TABLE = [("metric", "Metric"), ("unit", "Unit"), ("count", "Count"), ("mean", "Mean"), ("p50", "p50"),
         ("p90", "p90"), ("p95", "p95"), ("p99", "p99"), ("p999", "p99.9"), ("max", "Max"),
         ("current", "Current (p50 / rate, last 10 s)")]
log = logging.getLogger("loadgen.locust")


def install(web_ui: Any, session: Any) -> None:
    """Register the routes and hooks on Locust's Flask app (called from the ``init`` event)."""
    from flask import Response, jsonify, request

    app = web_ui.app
    web_ui.template_args["extendedTabs"] = [{"title": "LLM metrics", "key": TAB_KEY}]
    web_ui.template_args["extendedTables"] = [
        {"key": TAB_KEY, "structure": [{"key": k, "title": t} for k, t in TABLE]}]
    web_ui.template_args["extendedCsvFiles"] = [
        {"href": "./loadgen/stats.csv", "title": "Download LLM metrics CSV (3+ significant digits)"},
        {"href": "./loadgen/charts", "title": "LLM charts: TTFT, TPOT, ITL, E2E, output tokens/s, errors, server "
         "queue and KV cache"},
    ]

    @app.route("/loadgen/stats")
    @web_ui.auth_required_if_enabled
    def loadgen_stats() -> Any:
        data = session.stats.to_json()
        data["run_dir"] = str(session.run_dir) if session.run_dir else None
        data["summary"] = session.summary
        return jsonify(data)

    @app.route("/loadgen/stats.csv")
    @web_ui.auth_required_if_enabled
    def loadgen_stats_csv() -> Any:
        buf = io.StringIO()
        csv.writer(buf).writerows(session.stats.csv_rows())
        resp = Response(buf.getvalue(), mimetype="text/csv")
        resp.headers["Content-Disposition"] = "attachment;filename=llm_stats.csv"
        return resp

    @app.route("/loadgen/charts")
    @web_ui.auth_required_if_enabled
    def loadgen_charts() -> Any:
        return Response(CHARTS_PAGE, mimetype="text/html")

    @app.before_request
    def validate_swarm() -> Any:
        if request.method != "POST" or not request.path.endswith("/swarm"):
            return None
        try:
            session.validate_form(_form_options(session.environment.parsed_options, request.form),
                                  request.form.getlist("user_classes"))
        except LoadgenError as err:
            return jsonify({"success": False, "message": f"loadgen: {err}", "host": session.environment.host})
        return None

    @app.after_request
    def add_llm_stats(response: Any) -> Any:
        path = request.path
        try:
            if path.endswith("/stats/requests") and response.is_json:
                data = response.get_json()
                data["extended_stats"] = [{"key": TAB_KEY, "data": session.stats.rows()}]
                response.set_data(_dumps(data))
            elif path.endswith("/stats/report") and response.mimetype == "text/html":
                from loadgen.locust.report import html_block, inject_html

                page = response.get_data(as_text=True)
                response.set_data(inject_html(page, html_block(session.summary, session.stats)))
        except Exception:  # a view must never break Locust's own pages
            log.exception("loadgen: could not add the LLM metrics to %s", path)
        return response


def _dumps(data: Any) -> bytes:
    import orjson

    return orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY)


def _form_options(options: Any, form: Any) -> Any:
    """The parsed options as the swarm request will leave them (form values are strings)."""
    merged = copy.copy(options)
    for key, value in form.items():
        if key == "user_count":
            try:
                merged.num_users = int(value)
            except ValueError:
                pass
        elif key == "host":
            merged.host = value
        elif hasattr(merged, key) and key not in ("user_classes", "spawn_rate", "run_time"):
            current = getattr(merged, key)
            setattr(merged, key, (value == "true") if isinstance(current, bool) else value)
    return merged


CHARTS_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>LLM charts (slm-loadgen)</title>
<style>
body{font-family:sans-serif;margin:16px;background:#fafafa}h1{font-size:20px}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(520px,1fr));gap:16px}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:8px}.card h2{font-size:15px;margin:4px 0}
.legend span{margin-right:12px;font-size:12px}svg{width:100%;height:220px}
table{border-collapse:collapse;font-size:13px;margin-top:16px}td,th{border:1px solid #ccc;padding:3px 8px}
</style></head><body>
<h1>LLM metrics: TTFT, TPOT, ITL, E2E (current percentiles, last 10 s), output tokens/s, errors/s; the server's
queue and KV cache (its metrics page, --server-metrics)</h1>
<div class="grid" id="charts"></div>
<table id="table"></table>
<script>
const CHARTS=[
 {title:"TTFT (ms)",keys:["ttft_p50_ms","ttft_p90_ms","ttft_p99_ms"]},
 {title:"TPOT (ms)",keys:["tpot_p50_ms","tpot_p90_ms","tpot_p99_ms"]},
 {title:"ITL (ms)",keys:["itl_p50_ms","itl_p90_ms","itl_p99_ms"]},
 {title:"E2E (ms)",keys:["e2e_p50_ms","e2e_p90_ms","e2e_p99_ms"]},
 {title:"Output tokens/s",keys:["output_tokens_per_s"]},
 {title:"Requests/s and errors/s",keys:["requests_per_s","errors_per_s"]},
 {title:"Server: queued and running requests",keys:["server_queued","server_running"]},
 {title:"Server: KV-cache usage (0..1)",keys:["server_kv_usage"]}];
const COLORS=["#1f77b4","#ff7f0e","#d62728","#2ca02c"];
function esc(s){return String(s).replace(/[&<>]/g,c=>({"&":"&amp;","<":"&lt;",">":"&gt;"}[c]))}
function chart(c,hist){
 const W=500,H=200,P=40;let pts=hist.filter(p=>c.keys.some(k=>p[k]!=null));
 let ymax=1e-9;pts.forEach(p=>c.keys.forEach(k=>{if(p[k]!=null&&p[k]>ymax)ymax=p[k]}));
 const t0=pts.length?pts[0].t:0,t1=pts.length?Math.max(pts[pts.length-1].t,t0+1):1;
 const x=t=>P+(W-P-5)*(t-t0)/(t1-t0),y=v=>H-20-(H-30)*v/ymax;
 let s='<svg viewBox="0 0 '+W+' '+H+'"><line x1="'+P+'" y1="'+(H-20)+'" x2="'+W+'" y2="'+(H-20)+'" stroke="#999"/>';
 s+='<text x="2" y="14" font-size="11">'+ymax.toPrecision(4)+'</text><text x="2" y="'+(H-22)+'" font-size="11">0</text>';
 s+='<text x="'+(W-60)+'" y="'+(H-4)+'" font-size="11">'+t1.toFixed(0)+' s</text>';
 c.keys.forEach((k,i)=>{const d=pts.filter(p=>p[k]!=null).map(p=>x(p.t).toFixed(1)+','+y(p[k]).toFixed(1)).join(' ');
  if(d)s+='<polyline fill="none" stroke="'+COLORS[i]+'" stroke-width="1.5" points="'+d+'"/>'});
 s+='</svg><div class="legend">'+c.keys.map((k,i)=>'<span style="color:'+COLORS[i]+'">'+esc(k)+'</span>').join('')+'</div>';
 return '<div class="card"><h2>'+esc(c.title)+'</h2>'+s+'</div>'}
function render(d){
 document.getElementById("charts").innerHTML=CHARTS.map(c=>chart(c,d.history||[])).join("");
 const cols=["metric","unit","count","mean","p50","p90","p95","p99","p999","max","current"];
 document.getElementById("table").innerHTML='<tr>'+cols.map(c=>'<th>'+c+'</th>').join('')+'</tr>'+
  (d.rows||[]).map(r=>'<tr>'+cols.map(c=>'<td>'+esc(r[c]==null?"":r[c])+'</td>').join('')+'</tr>').join('')}
function poll(){fetch("./stats").then(r=>r.json()).then(render).catch(()=>{}).finally(()=>setTimeout(poll,2000))}
poll();
</script></body></html>
"""
