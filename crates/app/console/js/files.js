// An export's file in the browser: downloaded through the API with the key, checked against the
// SHA-256 the API recorded, then saved; or its first rows read and shown as a table (as text).

import { request } from './api.js';
import { fill, h } from './dom.js';
import { formatBytes, formatCount } from './format.js';

const PREVIEW_ROWS = 20;
/** Plain bytes read at most for a preview. */
const PREVIEW_BYTES = 256 * 1024;
/** Larger files are saved without hashing them in the page (the API's checksum still stands). */
const HASH_LIMIT_BYTES = 1024 * 1024 * 1024;

/** The file's response; `null` when the API hands the file out as a signed storage link. */
async function open(resource) {
  const response = await request('GET', resource.links.download, { raw: true });
  return response.type === 'opaqueredirect' ? null : response;
}

/**
 * Saves a file the storage serves: the page may not read another origin (`connect-src 'self'`),
 * but the browser may navigate there, and the storage answers with the file itself.
 */
async function saveFromStorage(resource, report) {
  const { data: link } = await request('GET', `${resource.links.self}/download-link`);
  const anchor = h('a', { href: link.url, hidden: true, rel: 'noreferrer' });
  document.body.append(anchor);
  anchor.click();
  anchor.remove();
  const size = link.size_bytes === null ? '' : ` (${formatBytes(link.size_bytes)})`;
  report(`Downloading ${link.filename}${size} from the storage · SHA-256 ${link.sha256 ?? 'unknown'} `
    + '(checked by uex export download, not in the page)', 'ok');
}

/** `filename="export-….csv"` of a Content-Disposition, or a name made from the export. */
function filename(response, resource) {
  const match = /filename="([^"]+)"/.exec(response.headers.get('Content-Disposition') ?? '');
  if (match) return match[1];
  const extension = resource.format + (resource.compression === 'gzip' ? '.gz' : '');
  return `export-${resource.id}.${extension}`;
}

async function sha256Hex(blob) {
  const digest = await crypto.subtle.digest('SHA-256', await blob.arrayBuffer());
  return [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, '0')).join('');
}

/** Downloads the export's file, reporting progress through `report(text, tone)`. */
export async function download(resource, report) {
  const response = await open(resource);
  if (response === null) {
    await saveFromStorage(resource, report);
    return;
  }
  const total = Number(response.headers.get('Content-Length')) || resource.bytes || 0;
  const reader = response.body.getReader();
  const chunks = [];
  let received = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    chunks.push(value);
    received += value.length;
    const share = total ? ` (${Math.floor((received / total) * 100)} %)` : '';
    report(`Downloading ${formatBytes(received)}${share}…`);
  }
  const blob = new Blob(chunks, { type: response.headers.get('Content-Type') ?? 'application/octet-stream' });
  const expected = response.headers.get('X-Checksum-Sha256') ?? resource.sha256;
  let verdict = 'SHA-256 not checked in the page';
  if (crypto.subtle && expected && blob.size <= HASH_LIMIT_BYTES) {
    const actual = await sha256Hex(blob);
    if (actual !== expected) {
      throw new Error(`The file arrived damaged (SHA-256 ${actual}, expected ${expected}); it was not saved.`);
    }
    verdict = 'SHA-256 verified';
  }
  const name = filename(response, resource);
  const url = URL.createObjectURL(blob);
  const link = h('a', { href: url, download: name, hidden: true });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
  report(`Saved ${name} (${formatBytes(blob.size)}) · ${verdict}`, 'ok');
}

/** Lines of text from the start of the file (gunzipped), stopping after `PREVIEW_BYTES`. */
async function firstText(resource) {
  const response = await open(resource);
  if (response === null) {
    throw new Error('This server hands files out as signed links to its object storage, which the page '
      + 'may not read: download the file to see its rows.');
  }
  let stream = response.body;
  if (resource.compression === 'gzip') stream = stream.pipeThrough(new DecompressionStream('gzip'));
  const reader = stream.pipeThrough(new TextDecoderStream()).getReader();
  let text = '';
  let complete = false;
  try {
    while (text.length < PREVIEW_BYTES) {
      const { done, value } = await reader.read();
      if (done) {
        complete = true;
        break;
      }
      text += value;
    }
  } catch (error) {
    // Gzip files are one member per segment; a reader may refuse what follows the first one.
    if (!text) throw error;
  }
  await reader.cancel().catch(() => {});
  return { text, complete };
}

/** RFC 4180 records: quoted cells may hold commas, quotes (`""`) and line breaks. */
export function parseCsv(text) {
  const records = [];
  let record = [];
  let cell = '';
  let quoted = false;
  for (let i = 0; i < text.length; i += 1) {
    const c = text[i];
    if (quoted) {
      if (c === '"' && text[i + 1] === '"') {
        cell += '"';
        i += 1;
      } else if (c === '"') {
        quoted = false;
      } else {
        cell += c;
      }
    } else if (c === '"') {
      quoted = true;
    } else if (c === ',') {
      record.push(cell);
      cell = '';
    } else if (c === '\n' || c === '\r') {
      if (c === '\r' && text[i + 1] === '\n') i += 1;
      record.push(cell);
      records.push(record);
      record = [];
      cell = '';
    } else {
      cell += c;
    }
  }
  if (cell || record.length) records.push([...record, cell]);
  return records;
}

/** Header and rows of the first records, whatever the format. */
function table(resource, text, complete) {
  if (resource.format === 'csv') {
    const records = parseCsv(text);
    // The last record may be cut short unless the whole file was read.
    if (!complete) records.pop();
    return { header: records[0] ?? [], rows: records.slice(1, PREVIEW_ROWS + 1) };
  }
  const lines = text.split('\n');
  if (!complete) lines.pop();
  const objects = [];
  for (const line of lines) {
    const json = line.trim().replace(/,$/, '');
    if (!json || json === '[' || json === ']' || json === '[]') continue;
    objects.push(JSON.parse(json));
    if (objects.length === PREVIEW_ROWS) break;
  }
  const header = resource.fields;
  const cell = (v) => (v !== null && typeof v === 'object' ? JSON.stringify(v) : String(v ?? ''));
  return { header, rows: objects.map((o) => header.map((name) => cell(o[name]))) };
}

/** Reads the first rows of the export's file into `container`, as a table of text. */
export async function preview(resource, container) {
  fill(container, h('p', { class: 'muted' }, 'Reading the first rows…'));
  const { text, complete } = await firstText(resource);
  const { header, rows } = table(resource, text, complete);
  const total = resource.record_count ?? rows.length;
  fill(container,
    h('p', { class: 'muted' }, `First ${formatCount(rows.length)} of ${formatCount(total)} rows`),
    h('div', { class: 'table-scroll', tabindex: 0, role: 'region', 'aria-label': 'First rows of the file' },
      h('table', { class: 'rows' },
        h('thead', {}, h('tr', {}, header.map((name) => h('th', { scope: 'col' }, name)))),
        h('tbody', {}, rows.map((row) => h('tr', {}, row.map((value) => h('td', {}, value))))))));
}
