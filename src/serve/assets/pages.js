// The slide list (/), the progress page (/progress) and the login page (/login). No framework,
// no outside requests. With accounts, every page shows who is logged in and a "Log out" button;
// state-changing requests carry the session's CSRF token (X-CSRF-Token).
'use strict';
let me = { mode: 'single' };

async function whoami() {
  const r = await fetch('/api/me');
  if (r.ok) me = await r.json();
  const nav = document.querySelector('header nav');
  if (me.mode !== 'accounts' || !nav) return;
  const span = document.createElement('span');
  span.id = 'who';
  span.textContent = ' · ' + me.name + ' (' + me.role + ') ';
  const out = document.createElement('button');
  out.id = 'logout';
  out.textContent = 'Log out';
  out.addEventListener('click', async () => {
    await fetch('/api/logout', { method: 'POST', headers: { 'X-CSRF-Token': me.csrf } });
    location.href = '/login';
  });
  span.appendChild(out);
  nav.appendChild(span);
  if (me.role === 'instructor' && !nav.querySelector('a[href="/overview"]')) {
    const a = document.createElement('a');
    a.href = '/overview'; a.textContent = 'Overview';
    nav.insertBefore(document.createTextNode(' · '), span);
    nav.insertBefore(a, span);
  }
}

function caseLink(c) {
  return c.course ? '/view/' + encodeURIComponent(c.slide) + '?course=' + c.course[0] + '&item=' + c.course[1]
    : '/view/' + encodeURIComponent(c.slide) + '?quiz=1';
}
function caseName(c) { return c.course ? (c.course_title || 'course ' + c.course[0]) + ', case ' + (c.course[1] + 1) : c.slide; }
const pct = (v) => v == null ? '—' : Math.round(v * 100) + ' %';

// Scores over time: one point per round (0–100 %), oldest on the left.
function chart(rounds) {
  const ns = 'http://www.w3.org/2000/svg', W = 600, H = 160, pad = 24;
  const svg = document.createElementNS(ns, 'svg');
  svg.setAttribute('width', W); svg.setAttribute('height', H); svg.setAttribute('id', 'scorechart');
  const x = (i) => pad + (rounds.length < 2 ? (W - 2 * pad) / 2 : i * (W - 2 * pad) / (rounds.length - 1));
  const y = (v) => H - pad - v * (H - 2 * pad);
  for (const v of [0, 0.5, 1]) {
    const l = document.createElementNS(ns, 'line');
    Object.entries({ x1: pad, x2: W - pad, y1: y(v), y2: y(v), stroke: '#ccd' }).forEach(([k, val]) => l.setAttribute(k, val));
    svg.appendChild(l);
    const t = document.createElementNS(ns, 'text');
    t.setAttribute('x', 0); t.setAttribute('y', y(v) + 4); t.setAttribute('font-size', 10); t.textContent = (v * 100) + '%';
    svg.appendChild(t);
  }
  const line = document.createElementNS(ns, 'polyline');
  line.setAttribute('points', rounds.map((r, i) => x(i) + ',' + y(r.score)).join(' '));
  line.setAttribute('fill', 'none'); line.setAttribute('stroke', '#1a4fa0'); line.setAttribute('stroke-width', 2);
  svg.appendChild(line);
  rounds.forEach((r, i) => {
    const c = document.createElementNS(ns, 'circle');
    c.setAttribute('cx', x(i)); c.setAttribute('cy', y(r.score)); c.setAttribute('r', 4);
    c.setAttribute('fill', r.score < 0.5 ? '#d62020' : '#1a9e3a');
    const title = document.createElementNS(ns, 'title');
    title.textContent = r.time + ' · ' + r.case_key + ' · ' + pct(r.score);
    c.appendChild(title);
    svg.appendChild(c);
  });
  return svg;
}

async function overview() {
  const r = await fetch('/api/overview');
  if (!r.ok) { document.getElementById('status').textContent = await r.text(); return; }
  const d = await r.json();
  const tb = document.querySelector('#trainees tbody');
  for (const t of d.trainees) {
    const tr = tb.insertRow();
    link(cell(tr, ''), '/progress?trainee=' + encodeURIComponent(t.trainee), t.trainee);
    cell(tr, t.score.n); cell(tr, pct(t.score.mean)); cell(tr, pct(t.recent.mean));
    cell(tr, t.last_time.replace('T', ' ').replace('Z', ''));
    const flag = cell(tr, t.needs_help ? 'needs help' : '');
    if (t.needs_help) flag.className = 'wrong';
  }
  const cb = document.querySelector('#hardest tbody');
  for (const c of d.cases) {
    const tr = cb.insertRow();
    link(cell(tr, ''), caseLink(c), caseName(c));
    cell(tr, c.class); cell(tr, c.score.n); cell(tr, pct(c.score.mean)); cell(tr, c.missed);
  }
}

function login() {
  const form = document.getElementById('login');
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const body = { name: document.getElementById('name').value, password: document.getElementById('password').value };
    const r = await fetch('/api/login', { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body) });
    if (r.ok) { location.href = '/'; return; }
    document.getElementById('failed').textContent = await r.text();
  });
}
function cell(tr, text) { const td = document.createElement('td'); td.textContent = text; tr.appendChild(td); return td; }
function link(td, href, text) { const a = document.createElement('a'); a.href = href; a.textContent = text; td.appendChild(a); td.appendChild(document.createTextNode(' ')); }

async function slides() {
  const body = document.querySelector('#cases tbody');
  const data = await (await fetch('/api/slides')).json();
  document.getElementById('empty').hidden = data.slides.length > 0;
  for (const s of data.slides) {
    const tr = document.createElement('tr');
    cell(tr, s.name || s.id);
    cell(tr, s.slide_score && s.slide_score.value != null ? s.slide_score.value.toFixed(3) : '—');
    cell(tr, s.patches);
    cell(tr, s.model);
    cell(tr, s.expert_annotation ? 'yes' : 'no (scored against the AI)');
    const td = cell(tr, '');
    if (s.viewable) {
      link(td, '/view/' + encodeURIComponent(s.id), 'View');
      link(td, '/view/' + encodeURIComponent(s.id) + '?quiz=1', 'Quiz');
    } else {
      td.textContent = s.why_not;
    }
    body.appendChild(tr);
  }
}

async function progress() {
  const input = document.getElementById('trainee');
  const params = new URLSearchParams(location.search);
  if (me.mode === 'accounts') {
    // A trainee sees their own progress; an instructor may name any account.
    input.value = params.get('trainee') || me.name;
    input.readOnly = me.role !== 'instructor';
  } else {
    input.value = params.get('trainee') || localStorage.getItem('tessera-trainee') || '';
  }
  if (!input.value) return;
  const r = await fetch('/api/progress?trainee=' + encodeURIComponent(input.value));
  if (!r.ok) { document.getElementById('summary').textContent = await r.text(); return; }
  const data = await r.json();
  const sum = data.summary;
  if (sum && sum.rounds.length) {
    document.getElementById('more').hidden = false;
    document.getElementById('chart').appendChild(chart(sum.rounds));
    const cb = document.querySelector('#byclass tbody');
    for (const [k, m] of Object.entries(sum.by_class)) { const tr = cb.insertRow(); cell(tr, k); cell(tr, m.n); cell(tr, pct(m.mean)); }
    document.getElementById('noreview').hidden = sum.review.length > 0;
    if (sum.review.length && me.mode === 'accounts' && sum.trainee === me.name) {
      document.getElementById('startreview').hidden = false;
      document.getElementById('startlink').href = caseLink(sum.review[0]) + '&review=1';
    }
    const mb = document.querySelector('#missed tbody');
    for (const c of sum.cases.filter((c) => c.missed > 0).slice(0, 10)) {
      const tr = mb.insertRow();
      link(cell(tr, ''), caseLink(c), caseName(c));
      cell(tr, c.class); cell(tr, c.score.n); cell(tr, c.missed); cell(tr, pct(c.score.mean));
    }
    for (const c of sum.review) {
      const li = document.createElement('li');
      link(li, caseLink(c), caseName(c));
      li.appendChild(document.createTextNode('(' + c.class + ': last ' + pct(c.latest) + ', missed ' + c.missed + ' of ' + c.score.n + ')'));
      document.getElementById('review').appendChild(li);
    }
  }
  const body = document.querySelector('#rounds tbody');
  let hits = 0, regions = 0, falses = 0, right = 0, asked = 0;
  for (const round of data.rounds) {
    const s = round.score, tr = document.createElement('tr');
    cell(tr, round.time.replace('T', ' ').replace('Z', ''));
    const where = round.course != null
      ? '/view/' + encodeURIComponent(round.case) + '?course=' + round.course + '&item=' + round.item
      : '/view/' + encodeURIComponent(round.case) + '?quiz=1';
    link(cell(tr, ''), where, round.case);
    cell(tr, round.course != null ? (round.course_title || 'course ' + round.course) + ', case ' + (round.item + 1) : '—');
    if (s) {
      cell(tr, s.reference === 'expert' ? 'regions (expert annotation)' : 'regions (AI regions)');
      cell(tr, s.hits + ' of ' + s.regions + ' found, ' + s.false_marks + ' false mark' + (s.false_marks === 1 ? '' : 's') +
        (s.sensitivity !== undefined ? ' (sensitivity ' + pct(s.sensitivity) + ', precision ' + pct(s.precision) + ')' : ''));
      hits += s.hits; regions += s.regions; falses += s.false_marks;
    } else {
      cell(tr, 'diagnosis');
      cell(tr, round.diagnosis + (round.correct ? ' — correct' : ' — not correct'));
      asked += 1; if (round.correct) right += 1;
    }
    body.appendChild(tr);
  }
  document.getElementById('summary').textContent = data.rounds.length + (data.rounds.length === 1 ? ' round; ' : ' rounds; ') +
    hits + ' of ' + regions + ' regions found, ' + falses + ' false mark' + (falses === 1 ? '' : 's') + (asked ? '; ' + right + ' of ' + asked + ' diagnoses correct' : '') + '.';
}

// Resolves once the page knows who is logged in (course.js waits for it).
const ready = (async () => {
  if (document.getElementById('login')) { login(); return; }
  await whoami();
  if (document.getElementById('cases')) slides();
  if (document.getElementById('rounds')) progress();
  if (document.getElementById('trainees')) overview();
})();
