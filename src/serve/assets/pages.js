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
  const body = document.querySelector('#rounds tbody');
  let hits = 0, regions = 0, falses = 0;
  for (const round of data.rounds) {
    const s = round.score, tr = document.createElement('tr');
    cell(tr, round.time.replace('T', ' ').replace('Z', ''));
    link(cell(tr, ''), '/view/' + encodeURIComponent(round.case) + '?quiz=1', round.case);
    cell(tr, s.reference === 'expert' ? 'expert annotation' : 'AI regions');
    cell(tr, s.regions); cell(tr, s.hits); cell(tr, s.misses); cell(tr, s.false_marks);
    hits += s.hits; regions += s.regions; falses += s.false_marks;
    body.appendChild(tr);
  }
  document.getElementById('summary').textContent = data.rounds.length + (data.rounds.length === 1 ? ' round; ' : ' rounds; ') + hits + ' of ' + regions +
    ' regions found, ' + falses + ' false marks.';
}

// Resolves once the page knows who is logged in (course.js waits for it).
const ready = (async () => {
  if (document.getElementById('login')) { login(); return; }
  await whoami();
  if (document.getElementById('cases')) slides();
  if (document.getElementById('rounds')) progress();
})();
