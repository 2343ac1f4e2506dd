// The hostcrypt console's page: it reads /api/state when the event stream
// says the state changed, shows the timeline as it comes, and sends the
// operator's actions after a confirmation. Everything is built with DOM
// calls and textContent: no HTML is made from the data the page shows.
'use strict';

const $ = (id) => document.getElementById(id);
let state = null;
let stateTimer = null;

function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') e.className = v;
    else if (k === 'text') e.textContent = v;
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? '' : v);
  }
  for (const k of kids) {
    if (k === null || k === undefined) continue;
    e.append(k instanceof Node ? k : document.createTextNode(String(k)));
  }
  return e;
}

function clear(node) {
  while (node.firstChild) node.removeChild(node.firstChild);
  return node;
}

function badge(text, kind) {
  return el('span', { class: 'badge ' + (kind || text.replace(/\s+/g, '-')), text: text });
}

function bytes(n) {
  if (n === undefined || n === null) return '';
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(n < 10 ? 1 : 0) : n) + ' ' + u[i];
}

function when(t) {
  if (!t || t.startsWith('0001-')) return '';
  const d = new Date(t);
  return d.toISOString().replace('T', ' ').replace(/\.\d+Z$/, 'Z');
}

// keyName shows a key id as vault/key/version, the version cut short.
function keyName(kid) {
  if (!kid) return '';
  if (kid === 'platform') return 'platform';
  const m = kid.match(/\/vaults\/([^/]+)\/keys\/([^/]+)(?:\/([^/]+))?$/);
  if (!m) return kid;
  return m[1] + '/' + m[2] + (m[3] ? '/' + m[3].slice(0, 8) : '');
}

function notice(text, bad) {
  const n = $('notice');
  n.textContent = text;
  n.className = 'notice' + (bad ? ' bad' : '');
  clearTimeout(notice.timer);
  notice.timer = setTimeout(() => { n.className = 'notice hidden'; }, bad ? 15000 : 5000);
}

async function post(url, body) {
  const r = await fetch(url, {
    method: 'POST', credentials: 'same-origin',
    headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body || {}),
  });
  let data = null;
  try { data = await r.json(); } catch (e) { data = null; }
  if (!r.ok) {
    const msg = data && data.error ? data.error.message : r.status + ' ' + r.statusText;
    throw new Error(msg);
  }
  return data;
}

// confirmThen asks before an action; withToken asks for the operator's key
// store token too, which goes to action and nowhere else.
function confirmThen(title, text, withToken, action) {
  const d = $('confirm');
  $('confirm-title').textContent = title;
  $('confirm-text').textContent = text;
  $('confirm-token-label').className = withToken ? '' : 'hidden';
  $('confirm-token').value = '';
  const ok = $('confirm-ok');
  const fresh = ok.cloneNode(true);
  ok.replaceWith(fresh);
  fresh.addEventListener('click', async (ev) => {
    ev.preventDefault();
    const token = $('confirm-token').value;
    $('confirm-token').value = '';
    d.close();
    try {
      await action(token);
      notice(title + ': done');
    } catch (e) {
      notice(title + ': ' + e.message, true);
    }
    loadState();
  });
  d.showModal();
  if (withToken) $('confirm-token').focus();
}

// --- the state -----------------------------------------------------------

async function loadState() {
  const r = await fetch('/api/state', { credentials: 'same-origin' });
  if (r.status === 401) {
    notice('The session ended (hostcryptd restarts make a new token): log in again with /login?token=… and the content of STATE/console.token.', true);
    return;
  }
  if (!r.ok) {
    notice('reading the state: ' + r.status + ' ' + r.statusText, true);
    return;
  }
  state = await r.json();
  render();
}

function scheduleState() {
  if (stateTimer) return;
  stateTimer = setTimeout(() => { stateTimer = null; loadState(); }, 150);
}

function render() {
  renderHost();
  renderVMs();
  renderDES();
  renderKeys();
  renderBlockChoices();
}

function renderHost() {
  const h = state.host;
  const bits = [h.name, h.version.split(' ').slice(0, 2).join(' '), 'mount ' + h.mount,
    'key store ' + h.keyStore, 'key check every ' + h.keyCheckSeconds + ' s'];
  if (state.demoPlaintext) bits.push('demo: plaintext view on');
  const host = clear($('host'));
  host.append(el('span', { class: 'hostname', text: 'host ' + bits[0] }), ' · ' + bits.slice(1).join(' · '));
  if (state.readError) host.append(el('span', { class: 'bad', text: ' · ' + state.readError }));
}

function diskOf(name) {
  return (state.disks || []).find((d) => d.name === name);
}

function renderVMs() {
  const box = clear($('vms'));
  const vms = state.vms || [];
  if (!vms.length) box.append(el('p', { class: 'muted', text: 'No VM on this host yet (hostcrypt vm create).' }));
  for (const vm of vms) {
    const running = vm.powerState === 'running';
    const head = el('div', { class: 'vm-head' },
      el('span', { class: 'vm-name', text: vm.name }),
      el('span', { class: 'power', text: vm.powerState }),
      vm.securityProfile.encryptionAtHost ? badge('encryption at host', 'eah') : badge('no encryption at host', 'noeah'),
      vm.integrityErrors ? badge(vm.integrityErrors + ' integrity errors', 'alert') : null,
      el('span', { class: 'spacer' }),
      actionButton('Start', !running, () => vmAction(vm.name, 'start')),
      actionButton('Stop', running, () => vmAction(vm.name, 'stop')),
      actionButton('Deallocate', vm.powerState !== 'deallocated', () => vmAction(vm.name, 'deallocate')));
    const card = el('div', { class: 'vm ' + vm.powerState, 'data-vm': vm.name }, head);
    if (vm.powerStateReason) card.append(el('p', { class: 'reason', text: vm.powerStateReason }));
    if (vm.keyWarning) card.append(el('p', { class: 'warning', text: vm.keyWarning }));
    const rep = (state.reports || {})[vm.name];
    if (rep && rep.warning) card.append(el('p', { class: 'muted', text: rep.warning }));
    card.append(layerTable(vm, rep));
    box.append(card);
  }
}

function actionButton(label, enabled, fn) {
  return el('button', { class: 'act ' + label.toLowerCase(), disabled: !enabled, onclick: fn, text: label });
}

function vmAction(name, action) {
  const what = {
    start: 'Start VM ' + name + '? Its disks open, their data keys unwrapped by the key store.',
    stop: 'Stop VM ' + name + '? Its disks are flushed and closed and their keys wiped; the temp disk is kept.',
    deallocate: 'Deallocate VM ' + name + '? As stop, and its temp disk and that disk\'s key are destroyed.',
  }[action];
  confirmThen(action[0].toUpperCase() + action.slice(1) + ' ' + name, what, false,
    () => post('/api/vms/' + encodeURIComponent(name) + '/' + action, {}));
}

function layerTable(vm, rep) {
  const t = el('table', { class: 'grid layers' });
  t.append(el('tr', {}, ...['disk', 'layer', 'where', 'algorithm', 'key', 'cache', 'dirty', ''].map((h) => el('th', { text: h }))));
  if (!rep) {
    t.append(el('tr', {}, el('td', { colspan: 8, class: 'muted', text: 'no encryption report yet' })));
    return t;
  }
  let last = '';
  for (const e of rep.entries) {
    const first = e.disk !== last;
    last = e.disk;
    const d = diskOf(e.disk);
    const snap = first && d ? actionButton('Snapshot', true, () => snapshot(e.disk)) : null;
    const row = el('tr', { class: first ? 'first' : '' },
      el('td', {}, first ? el('span', { class: 'disk-name', text: e.disk }) : '', first && e.image ? el('small', { text: ' ' + e.image }) : ''),
      el('td', { text: e.layer }),
      el('td', { class: 'loc', text: e.location || '—' }),
      el('td', {}, e.encrypted ? e.algorithm : e.location ? badge('plaintext', 'plain') : el('span', { class: 'muted', text: 'nothing kept' })),
      el('td', { class: 'kid', title: e.keyId || '', text: e.key ? e.key.split(' + ').map(keyName).join(' + ') : '' }),
      el('td', { text: e.caching || '' }),
      el('td', { text: e.layer === 'host cache' && e.caching !== 'None' ? bytes(e.dirtyBytes) : '' }),
      el('td', {}, snap));
    t.append(row);
  }
  return t;
}

function snapshot(disk) {
  const name = disk + '-snap-' + new Date().toISOString().replace(/[-:]/g, '').slice(0, 15).toLowerCase();
  confirmThen('Snapshot ' + disk, 'Take snapshot ' + name + ' of disk ' + disk + '? Writes are held back while its point in time is fixed.', false,
    () => post('/api/snapshots', { name: name, source: disk, incremental: true }));
}

function renderDES() {
  const t = clear($('des'));
  t.append(el('tr', {}, ...['set', 'type', 'active key', 'auto-rotation', 'last rotation', 'key access'].map((h) => el('th', { text: h }))));
  const all = state.des || [];
  if (!all.length) t.append(el('tr', {}, el('td', { colspan: 6, class: 'muted', text: state.desError || 'none' })));
  for (const d of all) {
    let rot = d.rotationToLatestKeyVersionEnabled ? 'on' : 'off';
    if (d.rotationToLatestKeyVersionEnabled && d.nextKeyVersionCheck) rot += ', next check ' + when(d.nextKeyVersionCheck);
    t.append(el('tr', { 'data-des': d.name },
      el('td', { text: d.name }),
      el('td', { text: d.encryptionType.replace('EncryptionAtRestWith', '') }),
      el('td', { class: 'kid', title: d.activeKey.keyUrl, text: keyName(d.activeKey.keyUrl) }),
      el('td', {}, rot, d.autoKeyRotationError ? el('div', { class: 'bad', text: d.autoKeyRotationError }) : null),
      el('td', { text: when(d.lastKeyRotationTimestamp) || '—' }),
      el('td', {}, d.keyAccess === 'ok' ? badge('ok', 'enabled') : el('span', { class: 'bad', text: d.keyAccess || '' }))));
  }
}

function renderKeys() {
  $('keys-note').textContent = state.keyEventsError ? state.keyEventsError : 'as the key store\'s events tell them';
  const t = clear($('keys'));
  t.append(el('tr', {}, ...['key', 'version', 'state', 'expires', 'used by', ''].map((h) => el('th', { text: h }))));
  const keys = (state.keys || []).filter((k) => !k.platform || (k.usedBy && k.usedBy.length) || !k.name.startsWith('temp-disk-'));
  for (const k of keys) {
    const acts = el('td', { class: 'acts' });
    if (!k.platform && k.state !== 'deleted') {
      if (k.enabled) acts.append(actionButton('Disable', true, () => keyEnabled(k, false)));
      else acts.append(actionButton('Enable', true, () => keyEnabled(k, true)));
      if (k.current) acts.append(actionButton('Rotate', true, () => rotate(k)));
    }
    t.append(el('tr', { 'data-kid': k.kid, class: k.current ? '' : 'old' },
      el('td', { text: k.vault + '/' + k.name }),
      el('td', { class: 'kid', title: k.kid, text: k.version.slice(0, 12) + (k.current ? ' (current)' : '') }),
      el('td', {}, badge(k.state)),
      el('td', { text: when(k.expires) || 'never' }),
      el('td', { text: (k.usedBy || []).join(', ') }),
      acts));
  }
  const v = clear($('vaults'));
  v.append(el('tr', {}, ...['vault', 'location', 'sku', 'tenant', 'soft delete', 'purge protection', 'keys'].map((h) => el('th', { text: h }))));
  for (const x of state.vaults || []) {
    v.append(el('tr', {},
      el('td', { text: x.name + (x.platform ? ' (platform)' : '') }),
      el('td', { text: x.location || '' }),
      el('td', { text: x.sku || '' }),
      el('td', { class: 'kid', text: x.tenantId || x.error || '' }),
      el('td', { text: x.retentionDays ? x.retentionDays + ' days' : '' }),
      el('td', { text: x.purgeProtection ? 'on' : 'off' }),
      el('td', { text: String(x.keys) })));
  }
}

function keyEnabled(k, enabled) {
  const verb = enabled ? 'Enable' : 'Disable';
  const users = (k.usedBy || []).join(', ');
  const text = enabled
    ? 'Enable ' + k.vault + '/' + k.name + ' version ' + k.version.slice(0, 12) + '? Stopped VMs using it can start again.'
    : 'Disable ' + k.vault + '/' + k.name + ' version ' + k.version.slice(0, 12) + '?' + (users ? ' Used by ' + users + ': their running VMs stop at the next key check.' : '');
  confirmThen(verb + ' key', text, true, (token) => post('/api/keys/enabled', { kid: k.kid, enabled: enabled, token: token }));
}

function rotate(k) {
  confirmThen('Rotate key', 'Make a new version of ' + k.vault + '/' + k.name + '? Disk encryption sets with auto-rotation re-wrap their disks\' keys with it.', true,
    (token) => post('/api/keys/rotate', { kid: k.kid.replace(/\/[^/]+$/, ''), token: token }));
}

// --- the timeline --------------------------------------------------------

function addEvent(e) {
  const list = $('timeline');
  const item = el('li', { class: e.level + ' ' + e.kind, 'data-seq': e.seq },
    el('time', { text: when(e.time).slice(11) }),
    el('span', { class: 'kind', text: e.kind }),
    el('div', { class: 'title', text: e.title }),
    e.detail ? el('div', { class: 'detail', text: e.detail }) : null);
  list.insertBefore(item, list.firstChild);
  while (list.children.length > 300) list.removeChild(list.lastChild);
}

function follow() {
  const src = new EventSource('/api/events');
  src.addEventListener('open', () => { $('live').textContent = 'live'; $('live').className = 'live on'; });
  src.addEventListener('error', () => { $('live').textContent = 'reconnecting…'; $('live').className = 'live off'; });
  src.addEventListener('timeline', (m) => addEvent(JSON.parse(m.data)));
  src.addEventListener('state', () => scheduleState());
}

// --- rates ---------------------------------------------------------------

async function loadRates() {
  const r = await fetch('/api/rates', { credentials: 'same-origin' });
  if (!r.ok) return;
  const ans = await r.json();
  const box = clear($('rates'));
  if (!ans.available) {
    box.append(el('p', { class: 'muted', text: ans.note || 'rates are not available' }));
    return;
  }
  if (!ans.disks.length) box.append(el('p', { class: 'muted', text: 'no disk of a running VM' }));
  for (const s of ans.disks) {
    const p = s.points;
    const last = p.length ? p[p.length - 1] : null;
    const writes = p.reduce((n, q) => n + q.writeOps, 0);
    box.append(el('div', { class: 'rate', 'data-vm': s.vm, 'data-disk': s.disk, 'data-writes': writes.toFixed(0) },
      el('div', { class: 'rate-name', text: s.vm + ' / ' + s.disk }),
      spark(p),
      el('div', { class: 'rate-now' }, last
        ? 'read ' + last.readOps.toFixed(0) + ' IOPS, ' + last.readLatencyMs.toFixed(2) + ' ms · write ' + last.writeOps.toFixed(0) + ' IOPS, ' + last.writeLatencyMs.toFixed(2) + ' ms'
        : 'no samples yet')));
  }
}

// spark draws read and write IOPS as two lines.
function spark(points) {
  const NS = 'http://www.w3.org/2000/svg';
  const w = 320, h = 48;
  const svg = document.createElementNS(NS, 'svg');
  svg.setAttribute('viewBox', '0 0 ' + w + ' ' + h);
  svg.setAttribute('class', 'spark');
  const max = Math.max(1, ...points.map((q) => Math.max(q.readOps, q.writeOps)));
  for (const [field, cls] of [['readOps', 'r'], ['writeOps', 'w']]) {
    const line = document.createElementNS(NS, 'polyline');
    const n = Math.max(1, points.length - 1);
    line.setAttribute('points', points.map((q, i) => (i * w / n).toFixed(1) + ',' + (h - 2 - (q[field] / max) * (h - 4)).toFixed(1)).join(' '));
    line.setAttribute('class', cls);
    svg.append(line);
  }
  return svg;
}

// --- the block view ------------------------------------------------------

function renderBlockChoices() {
  const sec = $('block-section');
  sec.className = state.blocksAvailable ? '' : 'hidden';
  $('block-plain-label').className = state.demoPlaintext ? '' : 'hidden';
  const vmSel = $('block-vm');
  const running = (state.vms || []).filter((v) => v.powerState === 'running').map((v) => v.name);
  const chosen = vmSel.value;
  if (vmSel.dataset.list !== running.join(',')) {
    clear(vmSel);
    for (const n of running) vmSel.append(el('option', { value: n, text: n }));
    vmSel.dataset.list = running.join(',');
    if (running.includes(chosen)) vmSel.value = chosen;
    renderDiskChoices();
  }
}

function renderDiskChoices() {
  const vm = (state.vms || []).find((v) => v.name === $('block-vm').value);
  const sel = clear($('block-disk'));
  if (!vm) return;
  for (const d of [vm.storageProfile.osDisk, ...(vm.storageProfile.dataDisks || [])]) {
    if (d && d.name) sel.append(el('option', { value: d.name, text: d.name }));
  }
}

function b64(s) {
  const bin = atob(s || '');
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

function hex(u8) {
  return Array.from(u8, (b) => b.toString(16).padStart(2, '0')).join('');
}

// dump shows bytes 16 a line; marks maps a byte index to a class.
function dump(u8, marks, ascii) {
  const pre = el('pre', { class: 'hex' });
  for (let off = 0; off < u8.length; off += 16) {
    const line = el('span', { class: 'line' }, el('span', { class: 'off', text: off.toString(16).padStart(4, '0') + '  ' }));
    for (let i = off; i < Math.min(off + 16, u8.length); i++) {
      const m = marks ? marks(i) : '';
      line.append(el('span', { class: m, text: u8[i].toString(16).padStart(2, '0') }), ' ');
    }
    if (ascii) {
      let a = '';
      for (let i = off; i < Math.min(off + 16, u8.length); i++) a += u8[i] >= 32 && u8[i] < 127 ? String.fromCharCode(u8[i]) : '.';
      line.append(el('span', { class: 'ascii', text: ' ' + a }));
    }
    pre.append(line, '\n');
  }
  return pre;
}

async function lookAtBlock(ev) {
  ev.preventDefault();
  const vm = $('block-vm').value, disk = $('block-disk').value;
  const offset = Number($('block-offset').value || 0);
  const plaintext = state.demoPlaintext && $('block-plain').checked;
  try {
    const a = await post('/api/block', { vm: vm, disk: disk, offset: offset, plaintext: plaintext });
    showBlock(a);
  } catch (e) {
    notice('block view: ' + e.message, true);
  }
}

function showBlock(a) {
  const s = a.stored;
  const info = 'disk ' + a.disk + ' offset ' + a.offset + ': block ' + s.block + ', chunk ' + s.chunk + ' (' + s.object + ')';
  $('block-info').textContent = s.written
    ? info + ', slot ' + s.slot + ' at byte ' + s.offset + (s.persisted ? '' : ', not yet synced')
    : info + ': never written, nothing is stored (a hole reads as zeros)';
  const stored = clear($('block-stored'));
  for (const l of s.layers || []) {
    const nonce = b64(l.nonce), ct = b64(l.ciphertext), tag = b64(l.tag);
    const unit = new Uint8Array(nonce.length + ct.length + tag.length);
    unit.set(nonce, 0); unit.set(ct, nonce.length); unit.set(tag, nonce.length + ct.length);
    const layer = el('div', { class: 'layer', 'data-layer': l.layer, 'data-ciphertext': hex(ct) },
      el('h4', {}, 'layer ' + l.layer + ' · ' + l.algorithm + ' · ',
        el('span', { class: 'nonce', text: 'nonce ' + nonce.length + ' B' }), ' ',
        el('span', { class: 'ct', text: 'ciphertext ' + ct.length + ' B' }), ' ',
        el('span', { class: 'tag', text: 'tag ' + tag.length + ' B' })),
      dump(unit, (i) => (i < nonce.length ? 'nonce' : i >= nonce.length + ct.length ? 'tag' : 'ct')));
    stored.append(layer);
  }
  const guest = clear($('block-guest'));
  if (a.guest) {
    const g = b64(a.guest);
    guest.append(el('div', { class: 'guest', 'data-plaintext': hex(g) }, dump(g, null, true)));
  } else {
    guest.append(el('p', { class: 'muted', text: a.guestNote || 'not asked for' }));
  }
}

// --- start ---------------------------------------------------------------

document.addEventListener('DOMContentLoaded', () => {
  $('confirm-cancel').addEventListener('click', () => { $('confirm-token').value = ''; $('confirm').close(); });
  $('block-form').addEventListener('submit', lookAtBlock);
  $('block-vm').addEventListener('change', renderDiskChoices);
  loadState();
  follow();
  loadRates();
  setInterval(loadRates, 2000);
  setInterval(loadState, 10000);
});
