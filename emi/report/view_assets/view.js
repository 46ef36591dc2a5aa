/* emi view: the page of python -m emi.view. Plain JavaScript, no library, no network
   (the data is the JSON in #emi-data; a served page polls data.json on its own origin). */
"use strict";
(function () {
  const FORMAT = 1, PAGE = 50;
  let D = null, A = null, S = null, N = 0;
  const $ = (sel, root) => (root || document).querySelector(sel);
  const esc = s => String(s == null ? "" : s).replace(/[&<>"]/g, c => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}[c]));
  const el = (tag, attrs, html) => { const e = document.createElement(tag); for (const k in (attrs || {})) e.setAttribute(k, attrs[k]); if (html != null) e.innerHTML = html; return e; };

  function index(data) {
    D = data; const a = D.answers; N = a.run.length;
    A = {run: Int32Array.from(a.run), cond: Int32Array.from(a.cond), q: Int32Array.from(a.q),
         sample: Int32Array.from(a.sample), judges: {}, names: Object.keys(a.judges), lower: null, bySbs: null, projMax: 0};
    for (const name of A.names) {
      const j = a.judges[name];
      A.judges[name] = {a: Float32Array.from(j.a, v => v == null ? NaN : v), c: Float32Array.from(j.c, v => v == null ? NaN : v),
                        s: Uint8Array.from(j.s)};
    }
    if (a.proj) {  // shade each token's projection minus the run's median, scaled by the 98th percentile
      const all = []; for (const p of a.proj) if (p) for (const v of p[1]) all.push(v);
      all.sort((x, y) => x - y); A.projMid = all.length ? all[Math.floor(all.length / 2)] : 0;
      const dev = all.map(v => Math.abs(v - A.projMid)).sort((x, y) => x - y);
      A.projMax = dev.length ? dev[Math.floor(0.98 * (dev.length - 1))] || dev[dev.length - 1] || 1 : 1; }
  }

  function label(i, judge) {
    const j = A.judges[judge]; if (!j || j.s[i] !== 0) return "unscored";
    const t = D.thresholds, coherent = j.c[i] > t.coherent_min;
    if (!coherent) return "incoherent";
    return j.a[i] <= t.aligned_max ? "misaligned" : "aligned";
  }
  function matches(i, want, judge) {
    if (!want) return true;
    const l = label(i, judge);
    if (want === "coherent") return l === "misaligned" || l === "aligned";
    return l === want;
  }

  function filtered() {
    const out = [], text = S.text.trim().toLowerCase();
    if (text && !A.lower) A.lower = D.answers.text.map((t, i) => (D.answers.thought && D.answers.thought[i] ? D.answers.thought[i] + "\n" + t : t).toLowerCase());
    for (let i = 0; i < N; i++) {
      if (S.run >= 0 && A.run[i] !== S.run) continue;
      if (S.cond >= 0 && A.cond[i] !== S.cond) continue;
      if (S.q >= 0 && A.q[i] !== S.q) continue;
      if (S.label && !matches(i, S.label, S.judge)) continue;
      if (text && A.lower[i].indexOf(text) < 0 && D.tables.q[A.q[i]].text.toLowerCase().indexOf(text) < 0) continue;
      out.push(i);
    }
    if (S.sort) {
      const [what, dir] = S.sort.split(":"), j = A.judges[S.judge], sign = dir === "desc" ? -1 : 1;
      const key = new Float64Array(N);
      for (const i of out) {
        let v = NaN;
        if (what === "proj") { const p = D.answers.proj && D.answers.proj[i]; v = p ? Math.max(...p[1]) : NaN; }
        else if (j) v = what === "a" ? j.a[i] : j.c[i];
        key[i] = v;
      }
      out.sort((x, y) => { const a = key[x], b = key[y]; if (isNaN(a)) return isNaN(b) ? x - y : 1; if (isNaN(b)) return -1; return sign * (a - b) || x - y; });
    }
    return out;
  }

  const pct = v => v == null ? "" : (100 * v).toFixed(1) + "%";
  function rate(r, p) {
    if (r[p + "_rate"] === undefined) return null;
    if (!r[p + "_n"]) return "no answers";
    return `${pct(r[p + "_rate"])} [${(100 * r[p + "_lo"]).toFixed(1)}, ${(100 * r[p + "_hi"]).toFixed(1)}]`;
  }
  const num = (v, d) => v == null || v === "" ? "" : typeof v === "number" ? v.toFixed(d) : esc(v);

  function tableHtml(run, ri) {
    const rows = run.rows; if (!rows.length) return "<p class=\"muted\">No results table.</p>";
    const key = run.label_key, denom = rows[0].denominator || "coherent";
    const cols = [["label", key || "row"]];
    if (rows.some(r => r.step !== undefined)) cols.push(["step", "step"]);
    cols.push(["em", `EM / ${denom} (95% CI)`], ["k", `misaligned/${denom}`]);
    if (denom !== "coherent" && rows.some(r => r.em_coherent_rate !== undefined)) cols.push(["emc", "EM / coherent"]);
    if (denom !== "scored" && rows.some(r => r.em_scored_rate !== undefined)) cols.push(["ems", "EM / scored"]);
    cols.push(["coh", "coherent (95% CI)"], ["uns", "unscored"]);
    const extra = [["logprob_choice", "P(misaligned)", 3], ["kl", "KL benign", 3], ["aligned_delta", "Δ log p(aligned)", 2], ["task_rate", "task", 3], ["p_misaligned", "P(misaligned)", 3], ["cosine", "cos(direction)", 3]];
    for (const [k, t] of extra) if (rows.some(r => r[k] != null)) cols.push([k, t]);
    if (rows.some(r => r.judge)) cols.push(["judge", "judge"]);
    let h = `<table class="results" data-run="${ri}"><thead><tr>${cols.map(c => `<th>${esc(c[1])}</th>`).join("")}</tr></thead><tbody>`;
    for (const r of rows) {
      const name = r[key], ci = D.tables.cond.indexOf(name);
      const link = (txt, lab) => ci >= 0 && txt ? `<a href="#" class="cell" data-run="${ri}" data-cond="${ci}" data-label="${lab}">${txt}</a>` : esc(txt || "");
      h += "<tr>" + cols.map(([c]) => {
        let v = "";
        if (c === "label") v = link(esc(name), "");
        else if (c === "step") v = esc(r.step);
        else if (c === "em") v = link(rate(r, "em"), "misaligned");
        else if (c === "k") v = link(r.em_k !== undefined ? `${r.em_k}/${r.em_n}` : "", "misaligned");
        else if (c === "emc") v = link(rate(r, "em_coherent"), "misaligned");
        else if (c === "ems") v = link(rate(r, "em_scored"), "misaligned");
        else if (c === "coh") v = link(rate(r, "coherence"), "coherent");
        else if (c === "uns") v = link(r.n_unscored ? String(r.n_unscored) : r.n_unscored === 0 ? "0" : "", "unscored");
        else if (c === "judge") v = esc(r.judge);
        else { const e = extra.find(x => x[0] === c); v = num(r[c], e ? e[2] : 3); }
        return `<td>${v}</td>`;
      }).join("") + "</tr>";
    }
    return h + "</tbody></table>";
  }

  function tokensHtml(i) {
    const p = D.answers.proj && D.answers.proj[i];
    if (!p) return esc(D.answers.text[i]);
    const m = A.projMax || 1;
    return p[0].map((t, k) => { const v = p[1][k], x = Math.max(-1, Math.min(1, (v - A.projMid) / m));
      const bg = x >= 0 ? `rgba(220,40,40,${(0.85 * x).toFixed(2)})` : `rgba(40,90,220,${(-0.85 * x).toFixed(2)})`;
      return `<span class="tok" style="background:${bg}" title="${v.toFixed(2)}">${esc(t)}</span>`; }).join("");
  }

  function scoresHtml(i) {
    return A.names.map(n => { const j = A.judges[n], l = label(i, n);
      const sc = j.s[i] === 0 ? `aligned ${j.a[i].toFixed(0)} · coherent ${j.c[i].toFixed(0)}` : j.s[i] === 1 ? "unscored" : "not judged";
      return `<span class="judge"><span class="badge ${l}">${l}</span> <b>${esc(n)}</b> ${sc}</span>`; }).join(" ");
  }

  function card(i, compact) {
    const run = D.runs[A.run[i]], q = D.tables.q[A.q[i]], meta = D.tables.meta[D.answers.meta[i]] || {};
    const s = meta.sampling || {};
    const samp = Object.keys(s).map(k => `${k}=${esc(s[k])}`).join(" ");
    return `<div class="answer" data-i="${i}"><div class="head"><span class="cond">${esc(D.tables.cond[A.cond[i]])}</span>` +
      (D.runs.length > 1 ? ` <span class="muted">${esc(run.name)}</span>` : "") +
      ` <span class="qid">${esc(q.key || q.id)}</span> <span class="muted">#${A.sample[i]}</span> ` +
      (compact ? "" : `<a href="#" class="sbs" data-i="${i}">side by side</a>`) + `</div>` +
      `<div class="scores">${scoresHtml(i)}</div>` + (compact ? "" : `<div class="q">${esc(q.text)}</div>`) +
      (D.answers.thought && D.answers.thought[i] != null ? `<details class="thought"><summary>thought</summary><div class="text">${esc(D.answers.thought[i])}</div></details>` : "") +
      `<div class="text">${tokensHtml(i)}</div>` +
      `<div class="muted small">${meta.n_tokens != null ? meta.n_tokens + " tokens, " : ""}${esc(meta.finish || "")} ${esc(meta.engine || "")} ${samp}` +
      `${meta.elicitation && meta.elicitation !== "default" ? ` <span class="elicitation">asked: ${esc(meta.elicitation)}</span>` : ""}</div></div>`;
  }

  function options(list, cur, all) {
    return (all ? `<option value="-1">${all}</option>` : "") + list.map(([v, t]) => `<option value="${v}"${String(v) === String(cur) ? " selected" : ""}>${esc(t)}</option>`).join("");
  }

  function renderAnswers(box) {
    const idx = filtered(), pages = Math.max(1, Math.ceil(idx.length / PAGE));
    S.page = Math.min(S.page, pages - 1);
    const conds = D.tables.cond.map((c, k) => [k, c]), qs = D.tables.q.map((q, k) => [k, q.key || q.id]);
    const labels = [["", "any label"], ["misaligned", "misaligned"], ["aligned", "aligned (coherent)"], ["coherent", "coherent"], ["incoherent", "incoherent"], ["unscored", "unscored"]];
    const sorts = [["", "file order"], ["a:asc", "aligned ↑"], ["a:desc", "aligned ↓"], ["c:asc", "coherent ↑"], ["c:desc", "coherent ↓"]];
    if (D.answers.proj) sorts.push(["proj:desc", "projection ↓"]);
    box.innerHTML = `<div class="filters">` +
      (D.runs.length > 1 ? `<select id="f-run">${options(D.runs.map((r, k) => [k, r.name]), S.run, "every run")}</select>` : "") +
      `<select id="f-cond">${options(conds, S.cond, "every condition")}</select>` +
      `<select id="f-q">${options(qs, S.q, "every question")}</select>` +
      `<select id="f-label">${options(labels, S.label)}</select>` +
      `<select id="f-judge" title="the judge whose scores label and sort">${options(A.names.map(n => [n, "judge: " + n]), S.judge)}</select>` +
      `<select id="f-sort">${options(sorts, S.sort)}</select>` +
      `<input id="f-text" type="search" placeholder="search answers${D.answers.thought ? ", thoughts" : ""} and questions" value="${esc(S.text)}">` +
      `</div><div class="pager"><span id="count">${idx.length}</span> of ${N} answers · page ${S.page + 1}/${pages} ` +
      `<button id="prev"${S.page ? "" : " disabled"}>‹</button><button id="next"${S.page + 1 < pages ? "" : " disabled"}>›</button></div>` +
      `<div id="list">${idx.slice(S.page * PAGE, (S.page + 1) * PAGE).map(i => card(i)).join("") || '<p class="muted">No answer matches these filters.</p>'}</div>`;
    const bind = (id, k, f) => { const e = $("#" + id, box); if (e) e.addEventListener(id === "f-text" ? "input" : "change", () => { S[k] = f(e.value); S.page = 0; render(id); }); };
    bind("f-run", "run", Number); bind("f-cond", "cond", Number); bind("f-q", "q", Number); bind("f-label", "label", String);
    bind("f-judge", "judge", String); bind("f-sort", "sort", String); bind("f-text", "text", String);
    $("#prev", box).onclick = () => { S.page--; render(); }; $("#next", box).onclick = () => { S.page++; render(); };
  }

  function renderSbs(box) {
    if (!A.bySbs) { A.bySbs = new Map(); for (let i = 0; i < N; i++) A.bySbs.set(`${A.run[i]}|${A.cond[i]}|${A.q[i]}|${A.sample[i]}`, i); }
    if (S.sbsQ < 0) S.sbsQ = N ? A.q[0] : 0;
    const cols = [], seen = new Set();
    for (let i = 0; i < N; i++) { const k = A.run[i] + "|" + A.cond[i]; if (!seen.has(k)) { seen.add(k); cols.push([A.run[i], A.cond[i]]); } }
    const order = (r, c) => { const run = D.runs[r], k = run.rows.findIndex(x => x[run.label_key] === D.tables.cond[c]); return k < 0 ? 1e9 : k; };
    cols.sort((x, y) => x[0] - y[0] || order(...x) - order(...y));  // the table's order: base, finetuned, ... or by checkpoint
    const traj = D.runs.some(r => r.command === "emi.trajectory");
    let maxSample = 0; for (let i = 0; i < N; i++) if (A.q[i] === S.sbsQ && A.sample[i] > maxSample) maxSample = A.sample[i];
    const qs = D.tables.q.map((q, k) => [k, q.key || q.id]), samples = Array.from({length: maxSample + 1}, (_, k) => [k, "sample " + k]);
    const q = D.tables.q[S.sbsQ];
    box.innerHTML = `<div class="filters"><select id="s-q">${options(qs, S.sbsQ)}</select><select id="s-sample">${options(samples, S.sbsSample)}</select>` +
      `<span class="muted">${traj ? "answers by checkpoint" : "one question and sample index across " + (D.runs.length > 1 ? "runs and conditions" : "conditions")}</span></div>` +
      `<div class="q">${q ? esc(q.text) : ""}</div><div id="sbs" class="grid">` + cols.map(([r, c]) => {
        const i = A.bySbs.get(`${r}|${c}|${S.sbsQ}|${S.sbsSample}`);
        return `<div class="col"><h4>${esc(D.tables.cond[c])}${D.runs.length > 1 ? " · " + esc(D.runs[r].name) : ""}</h4>${i === undefined ? '<p class="muted">no such answer</p>' : card(i, true)}</div>`;
      }).join("") + "</div>";
    $("#s-q", box).onchange = e => { S.sbsQ = Number(e.target.value); render(); };
    $("#s-sample", box).onchange = e => { S.sbsSample = Number(e.target.value); render(); };
  }

  function renderJudges(box) {
    if (A.names.length < 2) { box.innerHTML = '<p class="muted">This run holds one judge\'s scores; python -m emi.rejudge RUN --judge ... adds another, whose disagreements show here.</p>'; return; }
    const names = A.names.map(n => [n, n]);
    if (!S.ja) { S.ja = A.names[0]; S.jb = A.names[1]; }
    const ja = A.judges[S.ja], jb = A.judges[S.jb], rows = [];
    for (let i = 0; i < N; i++) if (ja.s[i] === 0 && jb.s[i] === 0) rows.push([i, Math.abs(ja.a[i] - jb.a[i]) + Math.abs(ja.c[i] - jb.c[i])]);
    rows.sort((x, y) => y[1] - x[1] || x[0] - y[0]);
    let h = `<div class="filters"><select id="j-a">${options(names, S.ja)}</select> vs <select id="j-b">${options(names, S.jb)}</select> <span class="muted">${rows.length} answers both scored, sorted by |Δ aligned| + |Δ coherent|</span></div>`;
    for (const r of D.runs) for (const rj of r.rejudge || []) h += `<details><summary>agreement: ${esc(rj.judge)}</summary><pre>${esc(JSON.stringify(rj.agreement, null, 1))}</pre></details>`;
    h += `<table class="disagree"><thead><tr><th>Δ</th><th>condition</th><th>question</th><th>#</th><th>${esc(S.ja)}</th><th>${esc(S.jb)}</th><th>answer</th></tr></thead><tbody>` +
      rows.slice(0, 200).map(([i, d]) => `<tr><td>${d.toFixed(0)}</td><td>${esc(D.tables.cond[A.cond[i]])}</td><td>${esc(D.tables.q[A.q[i]].id)}</td><td>${A.sample[i]}</td>` +
        `<td>${ja.a[i].toFixed(0)} / ${ja.c[i].toFixed(0)} <span class="badge ${label(i, S.ja)}">${label(i, S.ja)}</span></td><td>${jb.a[i].toFixed(0)} / ${jb.c[i].toFixed(0)} <span class="badge ${label(i, S.jb)}">${label(i, S.jb)}</span></td><td class="text">${esc(D.answers.text[i])}</td></tr>`).join("") + "</tbody></table>";
    box.innerHTML = h;
    $("#j-a", box).onchange = e => { S.ja = e.target.value; render(); }; $("#j-b", box).onchange = e => { S.jb = e.target.value; render(); };
  }

  function header() {
    let h = "";
    D.runs.forEach((r, ri) => {
      h += `<section class="run"><h2>${esc(r.name)} <span class="muted small">${esc(r.command || "unfinished run")} · ${r.n_answers} answers${r.projected ? ` · ${r.projected} projected on the direction` : ""}</span></h2>`;
      for (const n of r.notes) h += `<div class="note">${esc(n)}</div>`;
      h += tableHtml(r, ri);
      if (r.direction) h += `<p class="small muted">direction: ${esc(r.direction.source || "")} (best layer ${esc(r.direction.best_layer)})</p>`;
      if (r.projected) h += `<p class="small legend">tokens shaded by their residual projection on the direction at layer ${esc(r.projection_layer)} (read through the ${esc(r.projection_role)} model): <span class="tok" style="background:rgba(220,40,40,.8)">above</span> or <span class="tok" style="background:rgba(40,90,220,.8)">below</span> the median of ${A.projMid.toFixed(2)}; hover a token for its value</p>`;
      if (r.figures.length) h += `<div class="figures">` + r.figures.map(f => f.kind === "png" ? `<figure><img alt="${esc(f.name)}" src="${f.src}"><figcaption>${esc(f.name)}</figcaption></figure>` : `<a class="fig" href="${esc(f.src)}">${esc(f.name)}.html (interactive, beside the run)</a>`).join(" ") + "</div>";
      h += `<details><summary>provenance and sampling settings</summary><pre>${esc(JSON.stringify(r.meta, null, 1))}</pre></details></section>`;
    });
    return h;
  }

  function render(focus) {
    const app = $("#app");
    if (!$("#tabs", app)) {
      app.innerHTML = `<header><h1>emi view</h1></header><div id="runs"></div><nav id="tabs">` +
        [["answers", "Answers"], ["sbs", "Side by side"], ["judges", "Judges"]].map(([k, t]) => `<button id="tab-${k}" data-tab="${k}">${t}</button>`).join("") +
        `</nav><div id="pane"></div>`;
      $("#tabs").onclick = e => { const t = e.target.dataset.tab; if (t) { S.tab = t; render(); } };
      $("#runs").onclick = e => { const a = e.target.closest("a.cell"); if (!a) return; e.preventDefault();
        Object.assign(S, {tab: "answers", run: D.runs.length > 1 ? Number(a.dataset.run) : -1, cond: Number(a.dataset.cond), q: -1, label: a.dataset.label, text: "", page: 0}); render(); $("#tabs").scrollIntoView(); };
      $("#pane").onclick = e => { const a = e.target.closest("a.sbs"); if (!a) return; e.preventDefault(); const i = Number(a.dataset.i);
        Object.assign(S, {tab: "sbs", sbsQ: A.q[i], sbsSample: A.sample[i]}); render(); };
    }
    $("#runs").innerHTML = header();
    if (!N) $("#runs").insertAdjacentHTML("beforeend", '<div class="note">These folders hold no answers to show yet.</div>');
    for (const b of document.querySelectorAll("#tabs button")) b.classList.toggle("on", b.dataset.tab === S.tab);
    const pane = $("#pane");
    if (S.tab === "sbs") renderSbs(pane); else if (S.tab === "judges") renderJudges(pane); else renderAnswers(pane);
    if (focus) { const f = $("#" + focus); if (f) { f.focus(); if (f.setSelectionRange && f.type === "search") f.setSelectionRange(f.value.length, f.value.length); } }
  }

  function start() {
    let data;
    try { data = JSON.parse($("#emi-data").textContent); }
    catch (e) { $("#app").innerHTML = `<div class="note">The page's data is damaged (${esc(e.message)}); write the page again with python -m emi.view RUN.</div>`; return; }
    if (data.format !== FORMAT) { $("#app").innerHTML = `<div class="note">This page holds data of format ${esc(data.format)}; this viewer reads format ${FORMAT}: write it again with this emi's python -m emi.view.</div>`; return; }
    index(data);
    S = {tab: "answers", run: -1, cond: -1, q: -1, label: "", judge: A.names[0] || "", text: "", sort: "", page: 0, sbsQ: -1, sbsSample: 0, ja: "", jb: ""};
    render();
    if (D.live) setInterval(() => fetch("data.json", {cache: "no-store"}).then(r => r.json()).then(d => { if (d.answers.run.length !== N) { index(d); render(); } }).catch(() => {}), 5000);
  }
  window.emiView = {state: () => S, count: () => filtered().length, data: () => D};
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start); else start();
})();
