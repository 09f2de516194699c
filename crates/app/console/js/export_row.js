// One export as a card: status, a live progress bar with throughput and ETA, what it holds, and
// its actions. Updated in place as polls arrive; actions are rebuilt only when they change, so
// keyboard focus stays where it is.

import { fill, h } from './dom.js';
import {
  formatBytes, formatCount, formatDate, formatDuration, formatRelative, timeElement,
} from './format.js';

export const FINISHED = new Set(['completed', 'failed', 'cancelled', 'expired']);

/** "CSV · gzip" */
export function describeFormat(request) {
  const format = String(request.format).toUpperCase();
  return request.compression === 'gzip' ? `${format} · gzip` : format;
}

/** A status pill; colour comes from `data-status` in the stylesheet, meaning from its text. */
export function badge(status) {
  return h('span', { class: 'badge', 'data-status': status }, status);
}

/** "active users at example.com created after …", or "all users". */
export function describeFilters(filters = {}, limit = null) {
  const parts = [];
  parts.push(filters.status?.length ? `${filters.status.join(', ')} users` : 'all users');
  if (filters.email_domain) parts.push(`at ${filters.email_domain}`);
  if (filters.created_after) parts.push(`created after ${formatDate(filters.created_after)}`);
  if (filters.created_before) parts.push(`created before ${formatDate(filters.created_before)}`);
  if (limit) parts.push(`(at most ${formatCount(limit)})`);
  return parts.join(' ');
}

export class ExportCard {
  /** `actions` maps an action name to `(exportResource, card) => void`. */
  constructor(resource, actions) {
    this.actions = actions;
    this.samples = [];
    this.actionKey = '';
    this.head = h('div', { class: 'card-head' });
    this.progress = h('div', { class: 'progress-line' });
    this.facts = h('p', { class: 'facts' });
    this.problem = h('p', { class: 'problem', hidden: true });
    this.buttons = h('div', { class: 'actions' });
    this.detailBody = h('dl', { class: 'details-list' });
    this.details = h('details', {}, h('summary', {}, 'Details'), this.detailBody);
    /** Where downloads and previews report; kept across updates. */
    this.extras = h('div', { class: 'extras' });
    this.element = h('li', { class: 'card export', 'data-id': resource.id },
      this.head, this.progress, this.facts, this.problem, this.buttons, this.details, this.extras);
    this.update(resource);
  }

  update(resource) {
    this.resource = resource;
    this.element.dataset.status = resource.status;
    this.renderHead(resource);
    this.renderProgress(resource);
    this.renderFacts(resource);
    this.problem.hidden = !resource.error;
    this.problem.textContent = resource.error
      ? `${resource.status === 'failed' ? 'Failed' : 'Retrying'}: ${resource.error.message}` : '';
    this.renderActions(resource);
    this.renderDetails(resource);
  }

  renderHead(r) {
    fill(this.head,
      badge(r.status),
      h('span', { class: 'card-title' }, describeFormat(r)),
      h('span', { class: 'muted' }, describeFilters(r.user_filters, r.limit)),
      h('span', { class: 'spacer' }),
      h('span', { class: 'muted' }, 'Created ', timeElement(r.created_at)));
  }

  renderProgress(r) {
    const { rows_written: written, total_rows: total, percent } = r.progress;
    const bar = h('progress', { max: 100, 'aria-label': 'Export progress' });
    if (r.status === 'completed') bar.value = 100;
    else if (percent !== null && percent !== undefined) bar.value = percent;
    const shown = bar.hasAttribute('value') ? `${bar.value} %` : '';
    this.samples.push([Date.now(), written]);
    this.samples = this.samples.slice(-5);
    let rate = '';
    if (!FINISHED.has(r.status) && this.samples.length > 1) {
      const [[t0, w0], [t1, w1]] = [this.samples[0], this.samples[this.samples.length - 1]];
      const perSecond = (w1 - w0) / ((t1 - t0) / 1000);
      if (perSecond > 0) {
        rate = `${formatCount(Math.round(perSecond))} rows/s`;
        if (total) rate += ` · about ${formatDuration((total - written) / perSecond)} left`;
      }
    }
    const rows = total ? `${formatCount(written)} of ${formatCount(total)} rows` : `${formatCount(written)} rows`;
    const attempt = r.attempt > 1 && !FINISHED.has(r.status) ? `attempt ${r.attempt}` : '';
    fill(this.progress, bar,
      h('span', { class: 'percent', 'data-percent': shown }, shown),
      h('span', { class: 'muted' }, [rows, rate, attempt].filter(Boolean).join(' · ')));
  }

  renderFacts(r) {
    const facts = [];
    if (r.record_count !== null) facts.push(`${formatCount(r.record_count)} rows`);
    if (r.bytes !== null) facts.push(formatBytes(r.bytes));
    if (r.finished_at) facts.push(h('span', {}, 'finished ', timeElement(r.finished_at)));
    if (r.expires_at) {
      const verb = r.status === 'expired' ? 'expired' : 'expires';
      facts.push(h('span', {}, `${verb} `, timeElement(r.expires_at, formatRelative(r.expires_at))));
    }
    const joined = facts.flatMap((fact, i) => (i === 0 ? [fact] : [' · ', fact]));
    fill(this.facts, joined);
    this.facts.hidden = facts.length === 0;
  }

  renderActions(r) {
    const available = [];
    if (r.links.download) available.push(['download', 'Download', 'primary']);
    if (r.links.download) available.push(['preview', 'Preview rows', 'ghost']);
    if (r.links.cancel) available.push(['cancel', 'Cancel', 'danger']);
    const key = available.map(([name]) => name).join();
    if (key === this.actionKey) return;
    this.actionKey = key;
    fill(this.buttons, available.map(([name, label, style]) => h('button', {
      type: 'button', class: `${style} small`, 'data-action': name,
      on: { click: () => this.actions[name](this.resource, this) },
    }, label)));
  }

  renderDetails(r) {
    const rows = [
      ['Export ID', r.id, 'mono'],
      ['Columns', r.fields.join(', ')],
      ['Users', describeFilters(r.user_filters, r.limit)],
      ['Started', r.started_at ? formatDate(r.started_at) : '—'],
      ['Attempts', `${r.attempt} run${r.attempt === 1 ? '' : 's'}, ${r.consumed_attempts} used up by failures`],
      ['Keep for', r.retention_days ? `${r.retention_days} days` : 'service default'],
      ['Notify', r.email_notify ? (r.notify_email ?? "the tenant's address") : 'no email'],
      ['SHA-256', r.sha256 ?? '—', 'mono'],
    ];
    if (r.notification) {
      rows.push(['Email', `${r.notification.status} (${r.notification.attempts} attempts)`]);
    }
    fill(this.detailBody, rows.map(([term, text, style]) => [
      h('dt', {}, term), h('dd', { class: style }, text),
    ]));
  }

  /** Shows a line in the card's extras area (downloads, cancel outcomes). */
  report(text, tone = 'info') {
    let line = this.extras.querySelector('.report');
    if (!line) {
      line = h('p', { class: 'report', role: 'status' });
      this.extras.prepend(line);
    }
    line.dataset.tone = tone;
    line.textContent = text;
  }
}
