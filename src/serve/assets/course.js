// The course pages: the list (/courses, with "new" and "import" for instructors), one course
// (/courses/{id}: its cases, each opening the viewer on its question) and the editor
// (/courses/new, /courses/{id}/edit). Text from courses is set as text; only the description's
// Markdown, rendered to safe HTML by the server, is inserted as HTML.
'use strict';
const $c = (s) => document.getElementById(s);
const courseId = location.pathname.split('/')[2];

function send(method, url, body) {
  const headers = { 'Content-Type': 'application/json' };
  if (me.mode === 'accounts') headers['X-CSRF-Token'] = me.csrf;
  return fetch(url, { method, headers, body });
}

function questionText(q) {
  if (q.kind === 'diagnosis') return "Give the slide's diagnosis (" + q.options.join(', ') + ').';
  if (q.kind === 'top_k') return 'Mark the ' + q.k + ' most suspicious areas (' + q.class + ').';
  return 'Mark the regions of ' + q.class + '.';
}

async function courseList() {
  const d = await (await fetch('/api/courses')).json();
  const body = document.querySelector('#courselist tbody');
  $c('nocourse').hidden = d.courses.length > 0;
  for (const c of d.courses) {
    const tr = body.insertRow();
    const a = document.createElement('a');
    a.href = '/courses/' + c.id; a.textContent = c.title;
    tr.insertCell().appendChild(a);
    tr.insertCell().textContent = c.cases;
    const td = tr.insertCell();
    if (d.role === 'instructor') { const e = document.createElement('a'); e.href = '/courses/' + c.id + '/edit'; e.textContent = 'Edit'; td.appendChild(e); }
  }
  if (d.role !== 'instructor') return;
  $c('instructor').hidden = false;
  $c('importform').addEventListener('submit', async (e) => {
    e.preventDefault();
    const f = $c('importfile').files[0];
    if (!f) return;
    const r = await send('POST', '/api/courses', await f.text());
    $c('status').textContent = r.ok ? 'Imported.' : 'Not imported: ' + await r.text();
    if (r.ok) location.href = '/courses/' + (await r.json()).id;
  });
}

async function coursePage() {
  const r = await fetch('/api/courses/' + courseId);
  if (!r.ok) { $c('pagetitle').textContent = await r.text(); return; }
  const c = await r.json();
  $c('pagetitle').textContent = c.title;
  document.title = c.title + ' — Tessera viewer';
  $c('description').innerHTML = c.description_html || '';
  if (me.mode !== 'accounts' || me.role === 'instructor') {
    $c('tools').hidden = false;
    $c('edit').href = '/courses/' + courseId + '/edit';
    $c('export').href = '/api/courses/' + courseId + '/export';
  }
  c.cases.forEach((k, i) => {
    const li = document.createElement('li');
    const a = document.createElement('a');
    a.href = '/view/' + encodeURIComponent(k.slide) + '?course=' + courseId + '&item=' + i;
    a.textContent = k.slide;
    li.appendChild(a);
    li.appendChild(document.createTextNode(' — ' + questionText(k.question)));
    $c('items').appendChild(li);
  });
}

// The editor: one fieldset per case.
let slideIds = [];
function field(box, label, el) { const l = document.createElement('label'); l.textContent = label + ' '; l.appendChild(el); box.appendChild(l); return el; }
function input(value, attrs) { const e = document.createElement('input'); Object.assign(e, attrs || {}); e.value = value == null ? '' : value; return e; }
function select(options, value) { const s = document.createElement('select'); for (const [v, t] of options) { const o = document.createElement('option'); o.value = v; o.textContent = t; s.appendChild(o); } if (value != null) s.value = value; return s; }
function area(value, rows) { const t = document.createElement('textarea'); t.rows = rows; t.value = value || ''; return t; }

function addCase(k) {
  k = k || { slide: slideIds[0], question: { kind: 'regions', class: '' }, truth: { kind: 'ai' }, notes: '', show_ai: true };
  const box = document.createElement('fieldset');
  box.className = 'case';
  const legend = document.createElement('legend'); box.appendChild(legend);
  const q = k.question, t = k.truth;
  const els = {
    slide: field(box, 'Slide', select(slideIds.map((s) => [s, s]), k.slide)),
    kind: field(box, 'Question', select([['regions', 'mark the regions of a class'], ['diagnosis', "give the slide's diagnosis from a list"], ['top_k', 'find the k most suspicious areas']], q.kind)),
    cls: field(box, 'Class', input(q.class, { size: 30 })),
    k: field(box, 'k', input(q.k || 3, { type: 'number', min: 1, max: 20 })),
    options: field(box, 'Options (one per line)', area((q.options || []).join('\n'), 3)),
    truth: field(box, 'Truth', select([['regions', 'expert regions (QuPath GeoJSON export)'], ['label', 'slide-level label'], ['ai', "the AI's regions (no expert truth)"]], t.kind)),
    geojson: field(box, 'GeoJSON', area(t.geojson ? JSON.stringify(t.geojson) : '', 3)),
    file: field(box, 'or from a file', input('', { type: 'file', accept: '.geojson,.json' })),
    label: field(box, 'Correct label', input(t.label, { size: 30 })),
    notes: field(box, 'Teaching notes (Markdown, shown after the answer)', area(k.notes, 3)),
    showAi: field(box, 'Show the AI heatmap after the answer', input('', { type: 'checkbox', checked: !!k.show_ai })),
    fingerprint: k.fingerprint,
    id: k.id,
  };
  els.file.addEventListener('change', async () => { if (els.file.files[0]) els.geojson.value = await els.file.files[0].text(); });
  const rm = document.createElement('button'); rm.type = 'button'; rm.textContent = 'Remove this case';
  rm.addEventListener('click', () => { box.remove(); number(); });
  box.appendChild(rm);
  const sync = () => {
    const kind = els.kind.value, truth = els.truth.value;
    els.cls.parentNode.hidden = kind === 'diagnosis';
    els.k.parentNode.hidden = kind !== 'top_k';
    els.options.parentNode.hidden = kind !== 'diagnosis';
    els.geojson.parentNode.hidden = els.file.parentNode.hidden = truth !== 'regions';
    els.label.parentNode.hidden = truth !== 'label';
  };
  els.kind.addEventListener('change', sync); els.truth.addEventListener('change', sync);
  box.els = els;
  sync();
  $c('caselist').appendChild(box);
  number();
}
function number() { document.querySelectorAll('#caselist fieldset legend').forEach((l, i) => { l.textContent = 'Case ' + (i + 1); }); }

function collect() {
  const cases = [];
  for (const box of document.querySelectorAll('#caselist fieldset')) {
    const e = box.els, kind = e.kind.value, truthKind = e.truth.value;
    const question = kind === 'diagnosis' ? { kind, options: e.options.value.split('\n').map((s) => s.trim()).filter((s) => s) }
      : kind === 'top_k' ? { kind, k: parseInt(e.k.value, 10), class: e.cls.value.trim() } : { kind, class: e.cls.value.trim() };
    let truth = { kind: truthKind };
    if (truthKind === 'label') truth.label = e.label.value.trim();
    if (truthKind === 'regions') {
      try { truth.geojson = JSON.parse(e.geojson.value); } catch (err) { throw new Error(box.querySelector('legend').textContent + ': the GeoJSON is not valid JSON'); }
    }
    const c = { slide: e.slide.value, question, truth, notes: e.notes.value, show_ai: e.showAi.checked };
    if (e.fingerprint && e.slide.value === box.originalSlide) c.fingerprint = e.fingerprint;
    if (e.id) c.id = e.id;
    cases.push(c);
  }
  return { format: 'tessera-course/1', title: $c('title').value.trim(), description: $c('description').value, cases };
}

async function editor() {
  slideIds = (await (await fetch('/api/slides')).json()).slides.map((s) => s.id);
  const editing = courseId !== 'new';
  if (editing) {
    const r = await fetch('/api/courses/' + courseId);
    if (!r.ok) { $c('status').textContent = await r.text(); return; }
    const c = await r.json();
    $c('title').value = c.title; $c('description').value = c.description || '';
    for (const k of c.cases) { addCase(k); document.querySelector('#caselist fieldset:last-of-type').originalSlide = k.slide; }
  } else addCase();
  $c('addcase').addEventListener('click', () => addCase());
  $c('save').addEventListener('click', async () => {
    let doc;
    try { doc = collect(); } catch (err) { $c('status').textContent = err.message; return; }
    const r = await send(editing ? 'PUT' : 'POST', editing ? '/api/courses/' + courseId : '/api/courses', JSON.stringify(doc));
    if (!r.ok) { $c('status').textContent = 'Not saved: ' + await r.text(); return; }
    const d = await r.json();
    $c('status').textContent = 'Saved: ' + d.cases + ' cases.';
    if (!editing) location.href = '/courses/' + d.id + '/edit';
  });
}

ready.then(() => {
  if ($c('courselist')) courseList();
  else if ($c('items')) coursePage();
  else if ($c('caselist')) editor();
});
