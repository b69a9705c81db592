"""The page's inline CSS and JavaScript (the viewer's code, and the head guard that records errors)."""

_CSS = """
*{box-sizing:border-box}body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1d2230;background:#f3f4f7}
#bar{position:sticky;top:0;z-index:5;background:#fff;border-bottom:1px solid #d5d8e0;padding:8px 14px;display:flex;flex-wrap:wrap;gap:6px 16px;align-items:center}
#bar .fg{display:flex;gap:3px;align-items:center}#bar .fg>span{color:#667;margin-right:3px}
button.fb,#layout{border:1px solid #c3c7d1;background:#f7f8fa;border-radius:4px;padding:2px 8px;cursor:pointer;font:inherit}
button.fb[aria-pressed=true]{background:#2d5bd7;border-color:#2d5bd7;color:#fff}
#count{font-weight:600}main{padding:10px 14px}h1{font-size:17px;margin:10px 14px 2px}
.notes{margin:6px 14px;padding:6px 10px;background:#fff7e0;border:1px solid #e8c96a;border-radius:4px}
.group{background:#fff;border:1px solid #d5d8e0;border-radius:6px;margin:0 0 14px;padding:10px}
.ghead .q{font-size:15px;white-space:pre-wrap}.ghead .meta{color:#556;margin:3px 0}
table.gtab{border-collapse:collapse;margin:6px 0;font-size:13px}table.gtab td,table.gtab th{border:1px solid #dde;padding:2px 7px;text-align:right}
table.gtab th{background:#f0f2f6}table.gtab td:first-child,table.gtab th:first-child{text-align:left}
.cards{display:grid;gap:10px}body.side .cards{grid-template-columns:repeat(var(--g,1),minmax(330px,1fr));overflow-x:auto}
article.traj{border:1px solid #d9dce4;border-radius:5px;padding:8px;background:#fcfcfd;min-width:0}
article.traj[hidden],.group[hidden]{display:none}
.chead{display:flex;flex-wrap:wrap;gap:6px;align-items:center;margin-bottom:4px}
.badge{border-radius:10px;padding:0 7px;font-size:12px;background:#e4e7ee}
.fin-answered,.ok{background:#d3f2d6;color:#145a1c}.fin-length,.fin-max_turns{background:#ffe2b8;color:#7a4300}
.fin-error,.bad{background:#f9d0d0;color:#8a1010}
.rew{display:flex;flex-wrap:wrap;gap:4px;margin:3px 0}.rew span{font-size:12px;background:#eef1f8;border-radius:3px;padding:0 5px}
.rew span.total{background:#dfe6fb;font-weight:600}
.imgs{display:flex;flex-wrap:wrap;gap:8px;align-items:flex-start;margin:6px 0}
figure{margin:0;max-width:100%}figcaption{font-size:11px;color:#556;max-width:360px}
.imbox{position:relative;display:inline-block;max-width:100%;line-height:0}
.imbox img{max-width:100%;height:auto;display:block;border:1px solid #ccd;image-rendering:auto}
.first img{max-width:min(100%,360px)}.crop img{max-width:min(100%,240px)}
.imbox svg{position:absolute;left:0;top:0;width:100%;height:100%;pointer-events:none}
rect.box{fill:rgba(255,40,40,.12);stroke:#ff2020;stroke-width:2.5px;vector-effect:non-scaling-stroke}
rect.gt{fill:none;stroke:#1e6bff;stroke-width:2px;stroke-dasharray:5 3;vector-effect:non-scaling-stroke}
svg text{fill:#ff2020;font:bold 13px sans-serif;paint-order:stroke;stroke:#fff;stroke-width:3px}
ol.turns{margin:4px 0;padding-left:0;list-style:none}ol.turns li{margin:4px 0}
.tlabel{font-size:12px;color:#667}pre{white-space:pre-wrap;word-break:break-word;margin:2px 0;font:12.5px/1.4 ui-monospace,Menlo,Consolas,monospace;background:#f2f3f6;padding:4px 6px;border-radius:3px}
.call{border-left:4px solid #2e9b45;background:#eef9f0;padding:3px 7px;margin:3px 0;font-size:12.5px}
.call.err{border-left-color:#d42020;background:#fde8e8}.call .emsg{color:#b00000;font-weight:600}
details.tok{margin-top:6px}details.tok summary{cursor:pointer;color:#2d4fb0;font-size:13px}
.toks{white-space:pre-wrap;word-break:break-word;font:12.5px/1.55 ui-monospace,Menlo,Consolas,monospace;background:#fff;border:1px solid #e2e4ea;padding:4px;margin-top:3px}
.tk{border-radius:2px}.tk.pol{border-bottom:1px solid #9bb}.chip{background:#dde3f3;color:#345;border-radius:3px;padding:0 3px;font-size:11px}
.tnote{font-size:12px;color:#8a5a00}.legend{font-size:12px;color:#445}
#selftest{display:none}
"""

_JS = r"""
(function(){
'use strict';
var DATA = JSON.parse(document.getElementById('vlmrl-data').textContent);
var cards = Array.prototype.slice.call(document.querySelectorAll('article.traj'));
var groups = Array.prototype.slice.call(document.querySelectorAll('section.group'));
Array.prototype.forEach.call(document.querySelectorAll('img[data-img]'), function(im){
  var u = DATA.images[im.getAttribute('data-img')]; if (u) im.src = u; });
var state = {outcome:'all', tool:'all', finish:'all', step:''};
function match(c){
  var d = c.dataset;
  if (state.step !== '' && d.step !== state.step) return false;
  if (state.outcome === 'correct' && d.correct !== '1') return false;
  if (state.outcome === 'wrong' && d.correct !== '0') return false;
  if (state.tool === 'tool' && d.tool !== '1') return false;
  if (state.tool === 'notool' && d.tool !== '0') return false;
  if (state.tool === 'toolerr' && d.toolerr !== '1') return false;
  if (state.finish === 'truncated' && d.trunc !== '1') return false;
  if (state.finish === 'answered' && d.finish !== 'answered') return false;
  return true;
}
function apply(){
  var n = 0;
  cards.forEach(function(c){ var ok = match(c); c.hidden = !ok; if (ok) n++; });
  groups.forEach(function(g){ g.hidden = !g.querySelector('article.traj:not([hidden])'); });
  document.getElementById('count').textContent = 'showing ' + n + ' of ' + cards.length + ' trajectories';
  if (colourMode !== 'none') openVisible();
  return n;
}
Array.prototype.forEach.call(document.querySelectorAll('button.fb'), function(b){
  b.addEventListener('click', function(){
    var f = b.getAttribute('data-f');
    state[f] = b.getAttribute('data-v');
    Array.prototype.forEach.call(document.querySelectorAll('button.fb[data-f="' + f + '"]'), function(o){
      o.setAttribute('aria-pressed', o === b ? 'true' : 'false'); });
    apply();
  });
});
var stepSel = document.getElementById('f-step');
if (stepSel) stepSel.addEventListener('change', function(){ state.step = stepSel.value; apply(); });
var layout = document.getElementById('layout');
function setLayout(side){ document.body.classList.toggle('side', side);
  layout.textContent = side ? 'layout: side by side' : 'layout: stacked'; }
layout.addEventListener('click', function(){ setLayout(!document.body.classList.contains('side')); });

// ---- tokens
var colourMode = 'none';
var colourSel = document.getElementById('colour');
function fmt(x){ if (x === null || x === undefined) return '—'; return (Math.abs(x) >= 100 || x === Math.round(x)) ? String(x) : x.toFixed(4); }
function bg(mode, tk, i){
  if (mode === 'none') return '';
  if (mode === 'mask') return tk.m[i] ? 'rgba(60,180,90,.28)' : 'rgba(120,120,130,.14)';
  if (mode === 'turn') { if (tk.turn[i] < 0) return ''; var h = (tk.turn[i] * 83 + 200) % 360;
    return 'hsla(' + h + ',70%,' + (tk.m[i] ? '75%' : '90%') + ',.9)'; }
  var arr = tk.stats[mode]; if (!arr) return '';
  var v = arr[i]; if (v === null || v === undefined) return '';
  var sc = DATA.scales[mode] || {kind:'seq', s:1};
  if (sc.kind === 'prob') { if (!tk.m[i]) return ''; var p = Math.exp(v); return 'rgba(230,40,40,' + (0.85 * (1 - p)).toFixed(3) + ')'; }
  if (!tk.m[i] && v === 0) return '';
  var x = Math.max(-1, Math.min(1, v / sc.s));
  if (sc.kind === 'div') return x >= 0 ? 'rgba(30,170,70,' + (0.8 * x).toFixed(3) + ')' : 'rgba(225,40,40,' + (-0.8 * x).toFixed(3) + ')';
  return 'rgba(255,130,0,' + (0.85 * Math.abs(x)).toFixed(3) + ')';
}
function text(tk, i){ var o = tk.over[i]; if (o !== undefined) return o; var s = DATA.vocab[tk.ids[i]]; return s === undefined ? '\u25a1' : s; }
function title(tk, i){
  var s = '#' + i + '  id ' + tk.ids[i] + '  ' + JSON.stringify(text(tk, i)) + '\nmask ' + tk.m[i] + '  turn ' + tk.turn[i];
  Object.keys(tk.stats).forEach(function(k){ var v = tk.stats[k][i];
    s += '\n' + k + ' ' + fmt(v); if (k === 'logprob' && v !== null && tk.m[i]) s += ' (p=' + Math.exp(v).toFixed(3) + ')'; });
  return s;
}
function renderInto(box, tk, lo, hi){
  var i = lo;
  while (i < hi) {
    var id = tk.ids[i];
    if (DATA.collapse.indexOf(id) >= 0) {
      var j = i; while (j < hi && tk.ids[j] === id) j++;
      var c = document.createElement('span'); c.className = 'chip';
      c.textContent = '[' + DATA.vocab[id] + ' \u00d7' + (j - i) + ']';
      c.title = 'tokens ' + i + '\u2013' + (j - 1) + ': ' + (j - i) + ' image tokens';
      box.appendChild(c); i = j; continue;
    }
    var s = document.createElement('span'); s.className = tk.m[i] ? 'tk pol' : 'tk';
    s.textContent = text(tk, i); s.title = title(tk, i); s.setAttribute('data-i', i);
    box.appendChild(s); i++;
  }
}
function colour(det){
  var tk = DATA.tokens[det.getAttribute('data-uid')]; if (!tk) return;
  Array.prototype.forEach.call(det.querySelectorAll('span.tk'), function(s){
    s.style.background = bg(colourMode, tk, +s.getAttribute('data-i')); });
}
function render(det){
  if (det.getAttribute('data-done')) return;
  var tk = DATA.tokens[det.getAttribute('data-uid')]; if (!tk) return;
  det.setAttribute('data-done', '1');
  var wrap = det.querySelector('.tokwrap');
  var pd = document.createElement('details'); var ps = document.createElement('summary');
  ps.textContent = 'prompt: ' + tk.pl + ' tokens'; pd.appendChild(ps);
  var pb = document.createElement('div'); pb.className = 'toks'; renderInto(pb, tk, 0, tk.pl); pd.appendChild(pb);
  wrap.appendChild(pd);
  var rb = document.createElement('div'); rb.className = 'toks'; renderInto(rb, tk, tk.pl, tk.ids.length);
  wrap.appendChild(rb);
  colour(det);
}
function openVisible(){
  Array.prototype.forEach.call(document.querySelectorAll('article.traj:not([hidden]) details.tok[data-uid]'), function(d){
    if (!d.open) d.open = true; render(d); colour(d); });
}
Array.prototype.forEach.call(document.querySelectorAll('details.tok[data-uid]'), function(d){
  d.addEventListener('toggle', function(){ if (d.open) render(d); });
});
var LEGEND = {none:'', mask:'green: policy tokens (response mask 1); grey: prompt, observations, images',
  turn:'one hue per turn; lighter: tool observations', logprob:'red: unlikely sampled tokens (1 - p)'};
function legend(){
  var sc = DATA.scales[colourMode], s = LEGEND[colourMode];
  if (s === undefined && sc) s = sc.kind === 'div' ? 'red: \u2212' + fmt(sc.s) + ' \u2026 green: +' + fmt(sc.s) : 'orange: 0 \u2026 ' + fmt(sc.s);
  document.getElementById('legend').textContent = s ? colourMode + ': ' + s + ' (hover a token for its numbers)' : '';
}
if (colourSel) colourSel.addEventListener('change', function(){
  colourMode = colourSel.value; legend();
  if (colourMode !== 'none') openVisible();
  Array.prototype.forEach.call(document.querySelectorAll('details.tok[data-done]'), colour);
});

// ---- URL hash: #colour=advantage, #stacked, #selftest
var hash = location.hash.replace(/^#/, '').split('&');
setLayout(DATA.defaultSide && hash.indexOf('stacked') < 0);
hash.forEach(function(h){ var kv = h.split('=');
  if (kv[0] === 'colour' && colourSel && colourSel.querySelector('option[value="' + kv[1] + '"]')) {
    colourSel.value = kv[1]; colourSel.dispatchEvent(new Event('change')); } });
apply();

function selftest(){
  var r = {};
  function visible(){ return document.querySelectorAll('article.traj:not([hidden])').length; }
  function click(f, v){ document.querySelector('button.fb[data-f="' + f + '"][data-v="' + v + '"]').click(); return visible(); }
  r.trajectories = cards.length; r.groups = groups.length; r.visible = visible();
  var imgs = document.querySelectorAll('article.traj img');
  r.images = imgs.length;
  r.images_loaded = Array.prototype.filter.call(imgs, function(im){ return im.complete && im.naturalWidth > 0; }).length;
  r.boxes = document.querySelectorAll('article.traj svg rect.box').length;
  r.tool_errors_shown = document.querySelectorAll('article.traj .call.err').length;
  r.filters = {correct: click('outcome', 'correct'), wrong: click('outcome', 'wrong')}; click('outcome', 'all');
  r.filters.tool = click('tool', 'tool'); r.filters.notool = click('tool', 'notool');
  r.filters.toolerr = click('tool', 'toolerr'); click('tool', 'all');
  r.filters.truncated = click('finish', 'truncated'); click('finish', 'all');
  r.visible_after = visible();
  r.colour_modes = colourSel ? Array.prototype.map.call(colourSel.options, function(o){ return o.value; }) : [];
  r.coloured = {};
  r.colour_modes.forEach(function(m){ colourSel.value = m; colourSel.dispatchEvent(new Event('change'));
    r.coloured[m] = Array.prototype.filter.call(document.querySelectorAll('span.tk'), function(s){ return s.style.background !== ''; }).length; });
  r.token_spans = document.querySelectorAll('span.tk').length;
  r.token_titles = Array.prototype.filter.call(document.querySelectorAll('span.tk'), function(s){ return s.title.indexOf('mask') >= 0; }).length;
  r.hostile_text_shown = document.body.textContent.indexOf('\u003cscript\u003ealert(1)\u003c/script\u003e') >= 0;
  r.injected_elements = document.querySelectorAll('main script, main iframe, main img:not([data-img]), main [onerror], main [onload]').length;
  r.step_options = stepSel ? stepSel.options.length - 1 : 0;
  r.alerts = window.__vlmrlAlerts; r.errors = window.__vlmrlErrors;
  var pre = document.createElement('pre'); pre.id = 'selftest'; pre.textContent = JSON.stringify(r);
  document.body.appendChild(pre);
}
if (hash.indexOf('selftest') >= 0) window.addEventListener('load', function(){
  try { selftest(); } catch (e) { window.__vlmrlErrors.push('selftest: ' + e);
    var pre = document.createElement('pre'); pre.id = 'selftest';
    pre.textContent = JSON.stringify({errors: window.__vlmrlErrors}); document.body.appendChild(pre); } });
})();
"""

assert "</" not in _JS, "the inline script must not contain '</' (it would end the <script> element)"

_HEAD_JS = """window.__vlmrlErrors=[];window.__vlmrlAlerts=[];
window.addEventListener('error',function(e){window.__vlmrlErrors.push(String(e.message)+' @'+e.lineno+':'+e.colno);});
window.addEventListener('unhandledrejection',function(e){window.__vlmrlErrors.push('unhandled rejection: '+e.reason);});
if(location.hash.indexOf('selftest')>=0){window.alert=function(m){window.__vlmrlAlerts.push(String(m));};}"""
