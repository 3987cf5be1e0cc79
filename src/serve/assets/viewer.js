// The viewer page (/view/{id}, quiz mode with ?quiz=1): OpenSeadragon with the slide's Deep Zoom
// tiles and the AI heatmap as a second tiled layer. Coordinates sent to the server are level-0
// pixels of the slide. Nothing is loaded from outside this server.
'use strict';
const id = decodeURIComponent(location.pathname.split('/').pop());
const params = new URLSearchParams(location.search);
// A course case (?course=ID&item=N) is a quiz round whose question and truth the course gives.
const course = params.get('course'), item = parseInt(params.get('item') || '0', 10);
const quiz = params.get('quiz') === '1' || course !== null;
const $ = (s) => document.getElementById(s);
const state = { result: null, overlay: null, marks: [], revealed: false, mpp: null, me: { mode: 'single' }, question: null, aiAllowed: true };

const viewer = OpenSeadragon({
  id: 'osd',
  tileSources: '/slides/' + encodeURIComponent(id) + '.dzi',
  drawer: 'canvas',
  showNavigationControl: false,
  showNavigator: true,
  navigatorPosition: 'TOP_RIGHT',
  gestureSettingsMouse: { clickToZoom: false },
  crossOriginPolicy: false,
  maxZoomPixelRatio: 2,
});
window.tesseraViewer = viewer; // for tests and the curious

function slideItem() { return viewer.world.getItemAt(0); }

function overlaySource() {
  const r = state.result, dims = r.slide.dimensions;
  const levels = Math.ceil(Math.log2(Math.max(dims.width, dims.height))) + 1;
  const q = '?class=' + encodeURIComponent($('class').value) + '&cmap=' + $('cmap').value +
    '&threshold=' + $('threshold').value;
  return {
    width: dims.width, height: dims.height, tileSize: 254, tileOverlap: 1,
    minLevel: 0, maxLevel: levels - 1,
    getTileUrl: (level, x, y) => '/overlay/' + encodeURIComponent(id) + '_files/' + level + '/' + x + '_' + y + '.png' + q,
  };
}

function refreshOverlay() {
  const gen = state.gen = (state.gen || 0) + 1;
  if (state.overlay) { viewer.world.removeItem(state.overlay); state.overlay = null; }
  if (!$('show').checked || (quiz && (!state.revealed || !state.aiAllowed))) return;
  viewer.addTiledImage({
    tileSource: overlaySource(), opacity: parseFloat($('opacity').value),
    // A newer refresh may have started meanwhile: only the latest layer stays.
    success: (e) => { if (gen === state.gen) state.overlay = e.item; else viewer.world.removeItem(e.item); },
  });
}

// Slide QC's artefacts: one picture over the whole slide (the tissue mask's raster, whose
// pixels cover mask_downsample level-0 pixels each, so it may reach a little past the edge).
function refreshQc() {
  if (state.qcItem) { viewer.world.removeItem(state.qcItem); state.qcItem = null; }
  const res = state.result;
  if (!$('qc').checked || !res.qc) return;
  const w = res.slide.dimensions.width, ds = res.parameters.tissue.mask_downsample;
  viewer.addSimpleImage({
    url: '/api/slides/' + encodeURIComponent(id) + '/qc.png', x: 0, y: 0,
    width: Math.ceil(w / ds) * ds / w, opacity: 0.55,
    success: (e) => { state.qcItem = e.item; },
  });
}

function legend() {
  const stops = [];
  for (let i = 0; i <= 10; i++) stops.push(colour($('cmap').value, i / 10));
  $('legend').style.background = 'linear-gradient(to right,' + stops.join(',') + ')';
  $('thresholdv').textContent = $('threshold').value;
}

function colour(map, p) {
  const lerp = (a, b, t) => a.map((v, i) => Math.round(v + (b[i] - v) * t));
  if (map === 'jet') {
    const f = (x) => Math.max(0, Math.min(1, 1.5 - Math.abs(4 * p - x)));
    return 'rgb(' + [f(3), f(2), f(1)].map((v) => Math.round(v * 255)).join(',') + ')';
  }
  if (map === 'coolwarm') {
    const c = p < 0.5 ? lerp([59, 76, 192], [221, 221, 221], p * 2) : lerp([221, 221, 221], [180, 4, 38], (p - 0.5) * 2);
    return 'rgb(' + c.join(',') + ')';
  }
  const v = [[68, 1, 84], [71, 44, 122], [59, 81, 139], [44, 113, 142], [33, 144, 141], [39, 173, 129], [92, 200, 99], [170, 220, 50], [253, 231, 37]];
  const x = p * 8, i = Math.min(7, Math.floor(x));
  return 'rgb(' + lerp(v[i], v[i + 1], x - i).join(',') + ')';
}

function scalebar() {
  if (!state.mpp || !slideItem()) return;
  const zoom = slideItem().viewportToImageZoom(viewer.viewport.getZoom(true)); // screen px per image px
  const umPerPx = state.mpp / zoom;
  let um = umPerPx * 120;
  const p = Math.pow(10, Math.floor(Math.log10(um)));
  um = [1, 2, 5, 10].map((m) => m * p).filter((v) => v <= um).pop() || p;
  $('scalebar-bar').style.width = (um / umPerPx) + 'px';
  $('scalebar-text').textContent = um >= 1000 ? (um / 1000) + ' mm' : um + ' µm';
}

function goTo(box) {
  const rect = slideItem().imageToViewportRectangle(box.x, box.y, box.side, box.side);
  viewer.viewport.fitBounds(rect);
}

function imagePoint(e) { return slideItem().viewerElementToImageCoordinates(e.position); }

async function showPatch(pt) {
  const r = await fetch('/api/slides/' + encodeURIComponent(id) + '/patch?x=' + Math.round(pt.x) + '&y=' + Math.round(pt.y));
  const box = $('patch');
  if (!r.ok) { box.textContent = 'No analysed patch at (' + Math.round(pt.x) + ', ' + Math.round(pt.y) + ').'; return; }
  const d = await r.json();
  box.textContent = '';
  const t = document.createElement('table');
  const row = (a, b) => { const tr = t.insertRow(); tr.insertCell().textContent = a; tr.insertCell().textContent = b; };
  row('patch', 'col ' + d.patch.col + ', row ' + d.patch.row);
  row('level-0 box', d.patch.x + ', ' + d.patch.y + ' (' + d.patch.width + ' px)');
  for (const [k, v] of Object.entries(d.probabilities)) row('P(' + k + ')', v.toFixed(3));
  box.appendChild(t);
}

function addMark(pt) {
  const q = state.question;
  if (q && q.kind === 'diagnosis') return;
  if (q && q.kind === 'top_k' && state.marks.length >= q.k) { $('markcount').textContent = state.marks.length + ' (at most ' + q.k + ')'; return; }
  const el = document.createElement('div');
  el.className = 'mark';
  const mark = { x: pt.x, y: pt.y, el };
  el.addEventListener('click', (ev) => {
    ev.stopPropagation();
    if (state.revealed) return;
    viewer.removeOverlay(el);
    state.marks = state.marks.filter((m) => m !== mark);
    $('markcount').textContent = state.marks.length;
  });
  new OpenSeadragon.MouseTracker({ element: el, clickHandler: (e) => { e.preventDefaultAction = true; } });
  viewer.addOverlay({ element: el, location: slideItem().imageToViewportCoordinates(pt.x, pt.y), placement: OpenSeadragon.Placement.CENTER });
  state.marks.push(mark);
  $('markcount').textContent = state.marks.length;
}

function drawRegions(regions, colour) {
  for (const region of regions) {
    const pts = region.polygons.flat(2);
    const xs = pts.map((p) => p[0]), ys = pts.map((p) => p[1]);
    // (reduce, not Math.min(...xs): a polygon of many vertices would overflow the call stack)
    const lo = (a) => a.reduce((m, v) => v < m ? v : m, Infinity), hi = (a) => a.reduce((m, v) => v > m ? v : m, -Infinity);
    const x0 = lo(xs), y0 = lo(ys), w = hi(xs) - x0 || 1, h = hi(ys) - y0 || 1;
    const svg = document.createElementNS('http://www.w3.org/2000/svg', 'svg');
    svg.setAttribute('viewBox', x0 + ' ' + y0 + ' ' + w + ' ' + h);
    svg.setAttribute('preserveAspectRatio', 'none');
    svg.style.pointerEvents = 'none';
    svg.style.overflow = 'visible';
    const path = document.createElementNS('http://www.w3.org/2000/svg', 'path');
    path.setAttribute('d', region.polygons.map((rings) => rings.map((ring) => 'M' + ring.map((p) => p[0] + ' ' + p[1]).join('L') + 'Z').join('')).join(''));
    path.setAttribute('fill', 'none');
    path.setAttribute('fill-rule', 'evenodd');
    path.setAttribute('stroke', colour);
    path.setAttribute('stroke-width', '3');
    path.setAttribute('vector-effect', 'non-scaling-stroke');
    svg.appendChild(path);
    viewer.addOverlay({ element: svg, location: slideItem().imageToViewportRectangle(x0, y0, w, h) });
  }
}

async function reveal() {
  const trainee = $('trainee').value.trim();
  if (!trainee && !course) { $('trainee').focus(); return; }
  const headers = { 'Content-Type': 'application/json' };
  if (state.me.mode === 'accounts') headers['X-CSRF-Token'] = state.me.csrf;
  else if (trainee) localStorage.setItem('tessera-trainee', trainee);
  const marks = state.marks.map((m) => ({ x: m.x, y: m.y }));
  let url, body;
  if (course) {
    url = '/api/courses/' + encodeURIComponent(course) + '/cases/' + item + '/answer';
    body = state.question.kind === 'diagnosis' ? { diagnosis: $('diagnosis').value } : { marks };
  } else {
    url = '/api/quiz/' + encodeURIComponent(id);
    body = { trainee, marks, class: $('class').value };
  }
  const r = await fetch(url, { method: 'POST', headers, body: JSON.stringify(body) });
  const out = $('score');
  out.hidden = false;
  if (!r.ok) { out.textContent = 'Not scored: ' + await r.text(); return; }
  const d = await r.json();
  state.revealed = true;
  state.aiAllowed = !course || d.show_ai;
  $('reveal').disabled = true;
  if (state.aiAllowed) $('ai').hidden = false;
  out.innerHTML = '';
  // Everything from the server or the expert's file is set as text, never as HTML (the
  // course's notes excepted: the server renders their Markdown to safe HTML).
  const p = (t, cls) => { const e = document.createElement('p'); e.textContent = t; if (cls) e.className = cls; out.appendChild(e); return e; };
  if (d.score) showScore(d, p); else p(d.correct ? 'Correct: ' + d.label + '.' : 'Not correct: the answer is ' + d.label + '.', d.correct ? 'rates' : 'wrong');
  refreshOverlay();
  if (d.notes_html) { const n = document.createElement('div'); n.className = 'notes'; n.innerHTML = d.notes_html; out.appendChild(n); }
  if (state.aiAllowed) p('The AI heatmap is now shown as a second opinion. Decision support — findings require review by a pathologist.', 'note');
  else p('The instructor does not show the AI for this case.', 'note');
  p('Saved as answer ' + d.answer + (state.me.mode === 'accounts' ? ' of ' + state.me.name : '') + '.');
  if (params.get('review') === '1') {
    // Review mode: on to the next case still missed (the one just answered goes to the back).
    const a = document.createElement('a');
    a.id = 'next';
    const pr = await fetch('/api/progress');
    const review = pr.ok ? (await pr.json()).summary.review : [];
    const isHere = (c) => course ? (c.course && String(c.course[0]) === course && c.course[1] === item) : (!c.course && c.slide === id);
    const next = review.find((c) => !isHere(c));
    if (next) {
      a.href = (next.course ? '/view/' + encodeURIComponent(next.slide) + '?course=' + next.course[0] + '&item=' + next.course[1]
        : '/view/' + encodeURIComponent(next.slide) + '?quiz=1') + '&review=1';
      a.textContent = 'Next missed case →';
    } else { a.href = '/progress'; a.textContent = 'Nothing left to review: back to your progress'; }
    out.appendChild(a);
  } else if (course) {
    const a = document.createElement('a');
    a.id = 'next';
    if (d.next !== null && d.next !== undefined) {
      a.href = '/view/' + encodeURIComponent(state.course.cases[d.next].slide) + '?course=' + encodeURIComponent(course) + '&item=' + d.next;
      a.textContent = 'Next case →';
    } else { a.href = '/courses/' + encodeURIComponent(course); a.textContent = 'Back to the course'; }
    out.appendChild(a);
  }
}

function showScore(d, p) {
  const s = d.score;
  s.marks.forEach((hit, i) => {
    state.marks[i].el.classList.add(hit === null ? 'false' : 'hit');
    state.marks[i].el.title = 'mark ' + (i + 1);
  });
  const regionColour = d.reference.kind === 'expert' ? '#00b4ff' : '#ff2fd0';
  drawRegions(d.reference.regions.filter((_, i) => s.found[i]), regionColour);
  drawRegions(d.reference.regions.filter((_, i) => !s.found[i]), '#d62020');
  drawRegions(d.reference.context || [], '#9aa0a6');
  const out = $('score');
  const pct = (v) => v == null ? '—' : Math.round(v * 100) + ' %';
  p('Scored against ' + s.reference_description + '.', 'reference');
  p('Regions found: ' + s.hits + ' of ' + s.regions + ' · missed: ' + s.misses + ' · false marks: ' + s.false_marks);
  p('Sensitivity ' + pct(s.sensitivity) + ' · precision ' + pct(s.precision), 'rates');
  const list = (title, items) => {
    if (!items.length) return;
    p(title, 'listhead');
    const ul = document.createElement('ul');
    for (const t of items) { const li = document.createElement('li'); li.textContent = t; ul.appendChild(li); }
    out.appendChild(ul);
  };
  const cls = d.ai_class || $('class').value;
  list('Regions (found: outlined in colour; missed: in red):', d.reference.regions.map((r, i) =>
    (i + 1) + '. ' + (s.found[i] ? 'found' : 'missed') + (r.label ? ' — ' + r.label : '') + (r.note ? ': ' + r.note : '')));
  list('False marks:', s.false_mark_details.map((f) =>
    'mark ' + (f.mark + 1) + ': ' + (f.expert_label ? 'the expert labelled this ' + f.expert_label : 'outside the expert\'s regions') +
    (f.ai_probability != null ? '; AI P(' + cls + ') = ' + f.ai_probability.toFixed(2) : '; no analysed patch here')));
  if (s.froc.length) {
    list('As you marked (first marks are taken as the surest):', s.froc.map((f) =>
      'after ' + f.marks + ' mark' + (f.marks === 1 ? '' : 's') + ': sensitivity ' + pct(f.sensitivity) + ', ' + f.false_marks + ' false'));
  }
}

async function courseQuestion() {
  const r = await fetch('/api/courses/' + encodeURIComponent(course));
  if (!r.ok) { $('question').textContent = await r.text(); return; }
  state.course = await r.json();
  const q = state.question = state.course.cases[item].question;
  $('coursetitle').textContent = state.course.title + ' — case ' + (item + 1) + ' of ' + state.course.cases.length;
  $('coursetitle').href = '/courses/' + encodeURIComponent(course);
  $('question').textContent = questionText(q);
  $('howto').hidden = q.kind === 'diagnosis';
  if (q.kind === 'diagnosis') {
    $('diagnosisbox').hidden = false;
    for (const o of q.options) { const e = document.createElement('option'); e.textContent = o; $('diagnosis').appendChild(e); }
    $('reveal').textContent = 'Submit';
  }
}

function questionText(q) {
  if (q.kind === 'diagnosis') return "Give the slide's diagnosis.";
  if (q.kind === 'top_k') return 'Mark the ' + q.k + ' most suspicious areas (' + q.class + ').';
  return 'Mark the regions of ' + q.class + '.';
}

async function init() {
  const r = await fetch('/api/slides/' + encodeURIComponent(id));
  if (!r.ok) { $('title').textContent = await r.text(); return; }
  state.result = await r.json();
  const res = state.result, cfg = res.model.config;
  state.mpp = res.slide.mpp ? res.slide.mpp.x : null;
  $('title').textContent = (res.slide.path || id).split('/').pop();
  document.title = $('title').textContent + ' — Tessera viewer';
  for (const c of cfg.class_names) {
    const o = document.createElement('option'); o.textContent = c; $('class').appendChild(o);
  }
  $('class').value = cfg.tessera.positive_class || cfg.class_names[cfg.class_names.length - 1];
  for (const t of res.top_regions || []) {
    const li = document.createElement('li');
    li.textContent = 'score ' + t.score.toFixed(3) + ' at (' + t.centre_level0.x + ', ' + t.centre_level0.y + ')';
    li.addEventListener('click', () => goTo(t.crop_level0));
    $('regions').appendChild(li);
  }
  if (res.qc) {
    $('qcbox').hidden = false;
    $('qcverdict').textContent = res.qc.verdict.toUpperCase() +
      (res.qc.reasons.length ? ' — ' + res.qc.reasons.join('; ') : '');
    $('qcverdict').className = 'verdict-' + res.qc.verdict;
    $('qc').addEventListener('change', refreshQc);
  }
  const list = await (await fetch('/api/slides')).json();
  const me = await fetch('/api/me');
  if (me.ok) state.me = await me.json();
  if (state.me.mode === 'accounts') {
    // Answers belong to the logged-in account.
    $('trainee').value = state.me.name;
    $('trainee').readOnly = true;
  } else {
    $('trainee').value = localStorage.getItem('tessera-trainee') || list.trainee || '';
  }
  if (quiz) { $('quiz').hidden = false; $('ai').hidden = true; }
  if (course) { $('coursebox').hidden = false; $('traineebox').hidden = true; await courseQuestion(); }
  legend();
  for (const el of ['show', 'class', 'cmap']) $(el).addEventListener('change', refreshOverlay);
  $('threshold').addEventListener('change', refreshOverlay);
  $('threshold').addEventListener('input', legend);
  $('cmap').addEventListener('change', legend);
  $('opacity').addEventListener('input', () => { if (state.overlay) state.overlay.setOpacity(parseFloat($('opacity').value)); });
  $('reveal').addEventListener('click', reveal);
  viewer.addHandler('open', () => { refreshOverlay(); scalebar(); });
  viewer.addHandler('animation', scalebar);
  viewer.addHandler('canvas-click', (e) => {
    if (!e.quick || !slideItem()) return;
    const pt = imagePoint(e);
    if (quiz && !state.revealed) addMark(pt); else showPatch(pt);
  });
  if (viewer.world.getItemCount() > 0) { refreshOverlay(); scalebar(); }
}
init();
