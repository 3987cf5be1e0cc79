// The slide list (/) and the progress page (/progress). No framework, no outside requests.
'use strict';
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
  input.value = params.get('trainee') || localStorage.getItem('tessera-trainee') || '';
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
  document.getElementById('summary').textContent = data.rounds.length + ' rounds; ' + hits + ' of ' + regions +
    ' regions found, ' + falses + ' false marks.';
}

if (document.getElementById('cases')) slides();
if (document.getElementById('rounds')) progress();
