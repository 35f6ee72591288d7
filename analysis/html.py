"""One self-contained `report.html` per run: figures, tables and an attention viewer.

Nothing is fetched: the figures are inlined as base64 PNGs, the viewer's script and its data
(every attention block's weights for one example, rounded to 4 decimals) sit in the page.  The
viewer picks the kind (encoder self, decoder self, cross), layer and head; hovering a query
token (or a heatmap row) highlights what it attends to.  Its state lives in the URL hash,
`report.html#kind=decoder/cross_attn&layer=1&head=2&query=3` (`head=mean` averages the heads),
so a view can be shared or screenshotted headless.
"""

from __future__ import annotations

import base64
import html
import json
import os
from pathlib import Path

import numpy as np

from .inputs import attention_kind, attention_prefixes

_STYLE = """
body{font-family:system-ui,sans-serif;margin:0 2em 3em;color:#222;max-width:1500px}
h1{font-size:1.5em} h2{margin-top:2em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;font-size:12px;margin:.5em 0}
td,th{border:1px solid #ddd;padding:2px 6px;text-align:right}
th{background:#f3f3f3} td.name,th.name{text-align:left;font-family:monospace}
.tok{display:inline-block;padding:3px 5px;margin:2px;border:1px solid #bbb;border-radius:3px;
font-family:monospace;font-size:13px;cursor:default;min-width:1em;text-align:center}
.tok.active{outline:2px solid #d62728}
#viewer .row{margin:.4em 0} label{margin-right:1em}
figure{margin:1em 0} figure img{max-width:100%;border:1px solid #eee}
.warn{color:#b00} .pattern{font-family:monospace}
"""

_SCRIPT = r"""
const VIRIDIS=[[68,1,84],[59,82,139],[33,145,140],[94,201,98],[253,231,37]];
function color(t){t=Math.max(0,Math.min(1,t));const x=t*(VIRIDIS.length-1);const i=Math.min(
 Math.floor(x),VIRIDIS.length-2);const f=x-i;const a=VIRIDIS[i],b=VIRIDIS[i+1];
 return `rgb(${a.map((v,j)=>Math.round(v+f*(b[j]-v))).join(',')})`;}
const state={kind:null,layer:0,head:0,query:null};
function blocksOf(kind){return DATA.blocks.filter(b=>b.kind===kind);}
function readHash(){const p=new URLSearchParams(location.hash.slice(1));
 const kinds=[...new Set(DATA.blocks.map(b=>b.kind))];
 state.kind=kinds.includes(p.get('kind'))?p.get('kind'):kinds[0];
 const n=blocksOf(state.kind).length;
 state.layer=Math.max(0,Math.min(n-1,parseInt(p.get('layer')||'0')||0));
 const h=p.get('head');state.head=h==='mean'?'mean':Math.max(0,Math.min(DATA.heads-1,
  parseInt(h||'0')||0));
 const q=p.get('query');state.query=q===null?null:parseInt(q);}
function writeHash(){const q=state.query===null?'':`&query=${state.query}`;
 history.replaceState(null,'',`#kind=${state.kind}&layer=${state.layer}&head=${state.head}${q}`);}
function matrix(){const b=blocksOf(state.kind)[state.layer];
 if(state.head!=='mean')return b.weights[state.head];
 const w=b.weights;return w[0].map((row,i)=>row.map((_,j)=>w.reduce((s,h)=>s+h[i][j],0)/w.length));}
function labels(){const b=blocksOf(state.kind)[state.layer];return [DATA.tokens[b.queries],
 DATA.tokens[b.keys]];}
function fillControls(){const kinds=[...new Set(DATA.blocks.map(b=>b.kind))];
 const k=document.getElementById('kind'),l=document.getElementById('layer'),
 h=document.getElementById('head');
 k.innerHTML=kinds.map(x=>`<option ${x===state.kind?'selected':''}>${x}</option>`).join('');
 l.innerHTML=blocksOf(state.kind).map((b,i)=>`<option value="${i}" ${i===state.layer?
  'selected':''}>${b.name}</option>`).join('');
 h.innerHTML=[...Array(DATA.heads).keys()].map(i=>`<option value="${i}" ${i===state.head?
  'selected':''}>head ${i}</option>`).join('')+`<option value="mean" ${state.head==='mean'?
  'selected':''}>mean of heads</option>`;}
function draw(){fillControls();const w=matrix();const [ql,kl]=labels();
 const b=blocksOf(state.kind)[state.layer];
 document.getElementById('vtitle').textContent=`${b.name}/weights, `+(state.head==='mean'?
  'mean of heads':`head ${state.head}`)+`, example ${DATA.example}`;
 const cell=Math.max(8,Math.min(28,Math.floor(560/Math.max(w.length,w[0].length))));
 const pad=90,c=document.getElementById('heat');c.width=pad+cell*w[0].length+10;
 c.height=pad+cell*w.length+10;const g=c.getContext('2d');g.fillStyle='#fff';
 g.fillRect(0,0,c.width,c.height);let mx=0;w.forEach(r=>r.forEach(v=>{mx=Math.max(mx,v)}));
 mx=mx||1;
 w.forEach((r,i)=>r.forEach((v,j)=>{g.fillStyle=color(v/mx);g.fillRect(pad+j*cell,
  pad+i*cell,cell,cell);}));
 if(state.query!==null&&state.query<w.length){g.strokeStyle='#d62728';g.lineWidth=2;
  g.strokeRect(pad,pad+state.query*cell,cell*w[0].length,cell);}
 g.fillStyle='#222';g.font=`${Math.min(12,cell)}px monospace`;g.textAlign='right';
 g.textBaseline='middle';ql.forEach((t,i)=>g.fillText(t,pad-4,pad+i*cell+cell/2));
 kl.forEach((t,j)=>{g.save();g.translate(pad+j*cell+cell/2,pad-4);g.rotate(-Math.PI/2);
  g.textAlign='left';g.fillText(t,0,0);g.restore();});
 const qs=document.getElementById('queries'),ks=document.getElementById('keys');
 qs.innerHTML=ql.map((t,i)=>`<span class="tok${i===state.query?' active':''}"
  data-q="${i}">${esc(t)}</span>`).join('');
 const row=state.query===null?null:w[state.query];
 const rmax=row?Math.max(...row)||1:1;
 ks.innerHTML=kl.map((t,j)=>{const a=row?row[j]/rmax:0;return `<span class="tok"
  title="${row?row[j].toFixed(4):''}" style="background:rgba(255,127,14,${a.toFixed(3)})">
  ${esc(t)}</span>`}).join('');
 qs.querySelectorAll('.tok').forEach(s=>s.addEventListener('mouseenter',
  e=>{state.query=parseInt(e.target.dataset.q);writeHash();draw();}));}
function esc(t){return t.replace(/[&<>"]/g,c=>({'&':'&amp;','<':'&lt;','>':'&gt;',
 '"':'&quot;'}[c]));}
function onCanvas(e){const w=matrix();const cell=Math.max(8,Math.min(28,Math.floor(560/
 Math.max(w.length,w[0].length))));const r=e.target.getBoundingClientRect();
 const i=Math.floor((e.clientY-r.top-90)/cell);if(i>=0&&i<w.length&&i!==state.query){
 state.query=i;writeHash();draw();}}
window.addEventListener('DOMContentLoaded',()=>{readHash();
 document.getElementById('kind').addEventListener('change',e=>{state.kind=e.target.value;
  state.layer=0;state.query=null;writeHash();draw();});
 document.getElementById('layer').addEventListener('change',e=>{state.layer=
  parseInt(e.target.value);writeHash();draw();});
 document.getElementById('head').addEventListener('change',e=>{const v=e.target.value;
  state.head=v==='mean'?'mean':parseInt(v);writeHash();draw();});
 document.getElementById('heat').addEventListener('mousemove',onCanvas);
 window.addEventListener('hashchange',()=>{readHash();draw();});draw();});
"""


def _img(path: Path) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(Path(path).name)}" src="data:image/png;base64,{data}">'


def _num(x: float | None) -> str:
    return "–" if x is None else f"{x:.4g}"


def _table(headers: list[str], rows: list[list], name_cols: int = 1) -> str:
    head = "".join(f'<th class="{"name" if i < name_cols else ""}">{html.escape(h)}</th>'
                   for i, h in enumerate(headers))
    body = []
    for row in rows:
        cells = []
        for i, v in enumerate(row):
            text = f"{v:.4g}" if isinstance(v, float) else ("–" if v is None else str(v))
            cells.append(f'<td class="{"name" if i < name_cols else ""}">{html.escape(text)}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def viewer_data(inter: dict, src_labels: list[str], tgt_labels: list[str],
                example: int = 0) -> dict:
    """The viewer's data: every attention block's weights [h, q, k] of one example."""
    blocks = []
    heads = 0
    for prefix in attention_prefixes(inter):
        if f"{prefix}/weights" not in inter:
            continue
        kind = attention_kind(prefix)
        w = np.round(np.asarray(inter[f"{prefix}/weights"], dtype=np.float64)[example], 4)
        heads = w.shape[0]
        blocks.append({"name": prefix, "kind": kind, "weights": w.tolist(),
                       "queries": "src" if kind == "encoder/self_attn" else "tgt",
                       "keys": "tgt" if kind == "decoder/self_attn" else "src"})
    if not blocks:
        raise ValueError("the capture has no attention weights to view")
    return {"blocks": blocks, "heads": heads, "example": example,
            "tokens": {"src": src_labels, "tgt": tgt_labels}}


def _sections(report: dict, diff: dict | None) -> list[tuple[str, str, str]]:
    """(id, title, html) of the analysis tables."""
    out = []
    rows = []
    for prefix, block in report["attention_patterns"]["blocks"].items():
        for h in block["heads"]:
            rows.append([prefix, h["head"], h["pattern"], h["entropy"], h["normalized_entropy"],
                         h["max_weight"], h["local_mass"], h["delimiter_mass"],
                         h["positional_offset"], h["positional_mass"]])
    out.append(("patterns", "Attention patterns per head", _table(
        ["block", "head", "pattern", "entropy (nats)", "normalised entropy", "max weight",
         "local mass", "first/delimiter mass", "top offset", "offset mass"], rows, 3)))
    rows = []
    for prefix, e in report["qkv_statistics"].items():
        rows.append([prefix] + [float(np.mean(e[p][s])) for p in ("q", "k", "v")
                                for s in ("mean", "std", "norm")])
    out.append(("qkv", "Q, K, V statistics (mean over heads)", _table(
        ["block"] + [f"{p} {s}" for p in ("q", "k", "v") for s in ("mean", "std", "norm")],
        rows)))
    lc = report["layer_contributions"]
    rows = [[n, e["norm_ratio"], e["cosine"], e["output_norm"], e["residual_norm"]]
            for n, e in lc["sublayers"].items()]
    dla = lc["direct_logit_effects"]
    drows = [[n, e["logit_norm"], e["attribution"]] for n, e in dla["pieces"].items()]
    out.append(("contributions", "Layer contributions", _table(
        ["sublayer", "||out|| / ||in||", "cos(out, in)", "||out||", "||in||"], rows)
        + f"<p>Direct effect on the logits ({html.escape(dla['approximation'])}; "
          f"reconstruction error {dla['reconstruction_error']:.2e}; attribution to the "
          f"{dla['target']} token):</p>"
        + _table(["piece", "centred logit norm", "attribution"], drows)))
    gf = report["gradient_flow"]
    warn = "".join(f'<li class="warn">{html.escape(w["message"])}</li>' for w in gf["warnings"])
    out.append(("gradients", "Gradient flow", f"<p>loss {_num(gf['loss'])}, total gradient "
                f"norm {_num(gf['total_norm'])}</p><ul>{warn or '<li>no warnings</li>'}</ul>"
                + _table(["layer", "gradient norm"], [[k, v] for k, v in gf["layers"].items()])))
    if diff is not None:
        rows = sorted(([n, e.get("normalized"), e.get("max_abs"), e.get("mean_abs")]
                       for n, e in diff["entries"].items()),
                      key=lambda r: -(r[1] if r[1] is not None else np.inf))
        out.append(("parity", f"{diff['ref']} vs {diff['other']}: worst intermediates", _table(
            ["name", "normalised", "max abs", "mean abs"], rows[:25])
            + f"<p>missing: {html.escape(json.dumps(diff['missing']))}</p>"))
    if report.get("causal"):
        out.append(("causal", "Causal analyses", "".join(_causal_pair(c)
                                                         for c in report["causal"])))
    return out


def _causal_pair(c: dict) -> str:
    """One clean/corrupt pair of `analysis.causal.causal_report`: what was compared, the
    strongest heads, and how well the gradient approximations hold."""
    p, m = c["pair"], c["metric"]
    esc = html.escape
    head = (f"<h3>{esc(p['clean'])!s} vs {esc(p['corrupt'])}</h3><p>{esc(m['name'])} of "
            f"<code>{esc(p['clean_token'])}</code> over <code>{esc(p['corrupt_token'])}</code> at "
            f"target position {p['position']}: clean {_num(m['clean'])}, corrupt "
            f"{_num(m['corrupt'])}; scores are {esc(m['normalisation'])} ({esc(c['implementation'])}"
            f" model).</p>")
    heads = _table(["kind", "layer", "head", "activation patching", "attribution patching",
                    "ablation importance", "direct logit attribution"],
                   [[h["kind"], h["layer"], h["head"], h["patching"], h["attribution_patching"],
                     h["ablation"], h["dla"]] for h in c["top_heads"]], 3)
    agree = _table(["grid", "pearson r", "max |diff|", "sign agreement"],
                   [[k, v["pearson"], v["max_abs_diff"], v["sign_agreement"]]
                    for k, v in c["agreement"].items()])
    sa, dla = c["source_attribution"], c["direct_logit_attribution"]
    return (head + "<p>Strongest heads (denoising activation patching):</p>" + heads
            + "<p>Attribution patching against activation patching:</p>" + agree
            + f"<p>Integrated gradients ({sa['steps']} steps, {esc(sa['baseline'])} baseline): "
              f"largest completeness error {_num(sa['completeness_max_error'])} "
              f"({_num(100 * sa['completeness_relative_error'])}% of the largest "
              f"f(x) - f(baseline){_tolerance_note(sa)}).  Direct logit "
              f"attribution ({esc(dla['approximation'])}): reconstruction error "
              f"{_num(dla['reconstruction_error'])}.</p>")


def _tolerance_note(sa: dict) -> str:
    if sa.get("tolerance") is None:
        return ""
    met = "met" if sa["converged"] else "not met at the most steps allowed"
    return f"; tolerance {_num(100 * sa['tolerance'])}% {met}"


def write_html_report(path: str | os.PathLike, report: dict, inter: dict,
                      figures: dict[str, Path], diff: dict | None = None,
                      src_labels: list[str] | None = None, tgt_labels: list[str] | None = None,
                      example: int = 0) -> Path:
    """Write the page; `figures` maps captions to PNG paths (other files are ignored)."""
    path = Path(path)
    s_len = np.shape(inter["encoder/embed/output"])[1] if "encoder/embed/output" in inter \
        else len(src_labels or [])
    t_len = np.shape(inter["logits"])[1] if "logits" in inter else len(tgt_labels or [])
    src_labels = src_labels or [str(i) for i in range(s_len)]
    tgt_labels = tgt_labels or [str(i) for i in range(t_len)]
    data = json.dumps(viewer_data(inter, src_labels, tgt_labels, example), separators=(",", ":"))
    data = data.replace("</", "<\\/")  # never close the script tag from inside the data
    sections = _sections(report, diff)
    impl = html.escape(report["model"]["implementation"])
    nav = " · ".join(f'<a href="#{sid}">{html.escape(title)}</a>' for sid, title, _ in
                     [("viewer", "Attention viewer", ""), *sections, ("figures", "Figures", "")])
    figs = "".join(f"<figure>{_img(p)}<figcaption>{html.escape(label)}</figcaption></figure>"
                   for label, p in figures.items() if str(p).endswith(".png"))
    cfg = report["model"]["config"]
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>transformer-lab analysis ({impl})</title>
<style>{_STYLE}</style></head><body>
<h1>transformer-lab analysis: {impl} model</h1>
<p>d_model {cfg['d_model']}, {cfg['num_heads']} heads, {cfg['num_encoder_layers']}+\
{cfg['num_decoder_layers']} layers, {cfg['norm_position']}-LN; loss {_num(report['loss'])}</p>
<p>{nav}</p>
<section id="viewer"><h2>Attention viewer</h2>
<div class="row"><label>attention <select id="kind"></select></label>
<label>layer <select id="layer"></select></label>
<label>head <select id="head"></select></label></div>
<div class="row" id="vtitle"></div>
<div class="row">query tokens (hover one): <span id="queries"></span></div>
<div class="row">keys it attends to: <span id="keys"></span></div>
<canvas id="heat" width="400" height="400"></canvas>
</section>
{''.join(f'<section id="{sid}"><h2>{html.escape(t)}</h2>{body}</section>'
         for sid, t, body in sections)}
<section id="figures"><h2>Figures</h2>{figs}</section>
<script>const DATA={data};</script>
<script>{_SCRIPT}</script>
</body></html>
"""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path
