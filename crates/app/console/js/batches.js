// The Batches view (operator keys): start a batch for many tenants, open one by its ID, and
// follow each batch's per-tenant results while it runs. The API lists no batches, so the view
// remembers the ones started or opened in this tab.

import * as api from './api.js';
import { fill, h } from './dom.js';
import { badge, describeFormat } from './export_row.js';
import { formatCount, timeElement } from './format.js';
import { clearErrors, disclosure, mountRequestFields, readRequest, showErrors } from './forms.js';

const REMEMBERED = 'userexport.batches';
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

export class BatchesView {
  constructor(poller, notify) {
    this.poller = poller;
    this.notify = notify;
    this.cards = new Map();
    this.list = document.getElementById('batch-list');
    this.empty = document.getElementById('batch-empty');
    this.form = document.getElementById('batch-create');
    this.targets = document.getElementById('batch-targets');
    this.fields = mountRequestFields(this.form.querySelector('[data-slot="request"]'));
    this.idempotencyKey = api.newIdempotencyKey();
    this.close = disclosure(document.getElementById('batch-new'), this.form, () => {
      this.idempotencyKey = api.newIdempotencyKey();
    });
    for (const radio of this.form.elements['target-kind']) {
      radio.addEventListener('change', () => {
        this.targets.disabled = this.form.elements['target-kind'].value !== 'list';
        if (!this.targets.disabled) this.targets.focus();
      });
    }
    this.form.addEventListener('submit', (event) => {
      event.preventDefault();
      this.create();
    });
    const open = document.getElementById('batch-open');
    open.addEventListener('submit', (event) => {
      event.preventDefault();
      const id = open.elements.id.value.trim();
      if (!UUID.test(id)) {
        this.notify('A batch ID looks like 0193a1b2-…: 36 characters with dashes.', 'error');
        return;
      }
      open.elements.id.value = '';
      this.follow(id, true);
    });
  }

  remembered() {
    try {
      return JSON.parse(sessionStorage.getItem(REMEMBERED) ?? '[]');
    } catch {
      return [];
    }
  }

  remember(id, keep = true) {
    const ids = this.remembered().filter((known) => known !== id);
    if (keep) ids.unshift(id);
    sessionStorage.setItem(REMEMBERED, JSON.stringify(ids));
  }

  activate() {
    for (const id of this.remembered().reverse()) this.follow(id, false);
  }

  deactivate() {
    for (const id of this.cards.keys()) this.poller.stop(`batch:${id}`);
  }

  async create() {
    clearErrors(this.form);
    const listed = this.targets.value.split(/[\s,]+/).filter(Boolean);
    const body = {
      targets: this.form.elements['target-kind'].value === 'all' ? 'all' : listed,
      export: readRequest(this.fields),
    };
    const concurrency = this.form.elements.concurrency.value.trim();
    if (concurrency) body.concurrency = /^\d+$/.test(concurrency) ? Number(concurrency) : concurrency;
    try {
      const { data, retryAfter } = await api.post('/v1/exports/batch', body, { idempotencyKey: this.idempotencyKey });
      this.close();
      this.notify(`Batch started for ${formatCount(data.total)} tenants.`, 'ok');
      this.show(data);
      this.remember(data.id);
      if (retryAfter !== null) this.follow(data.id, false, retryAfter);
    } catch (error) {
      showErrors(this.form, error);
    }
  }

  /** Reads and follows batch `id`; `announce` reports an unknown ID. */
  follow(id, announce, firstDelay = 0) {
    this.poller.watch(`batch:${id}`, () => api.get(`/v1/exports/batch/${id}`),
      (batch) => {
        this.show(batch);
        this.remember(batch.id);
      },
      (error) => {
        if (error.status === 404) {
          this.remember(id, false);
          if (announce) this.notify(`No batch ${id}.`, 'error');
        } else {
          this.notify(`Could not read batch ${id}: ${error.message}`, 'error');
        }
      }, firstDelay);
  }

  show(batch) {
    let element = this.cards.get(batch.id);
    if (!element) {
      element = h('li', { class: 'card batch', 'data-id': batch.id });
      this.cards.set(batch.id, element);
      this.list.prepend(element);
    }
    this.empty.hidden = true;
    const done = batch.completed + batch.failed + batch.cancelled;
    const counts = [
      `${formatCount(done)} of ${formatCount(batch.total)} finished`,
      `${formatCount(batch.completed)} completed`,
      batch.failed ? `${formatCount(batch.failed)} failed` : null,
      batch.cancelled ? `${formatCount(batch.cancelled)} cancelled` : null,
      batch.running ? `${formatCount(batch.running)} running` : null,
      batch.pending ? `${formatCount(batch.pending)} waiting` : null,
    ].filter(Boolean).join(' · ');
    const bar = h('progress', { max: batch.total || 1, 'aria-label': 'Batch progress' });
    bar.value = done;
    fill(element,
      h('div', { class: 'card-head' },
        badge(batch.status),
        h('span', { class: 'card-title' }, batch.all_targets ? 'Every tenant' : `${formatCount(batch.total)} tenants`),
        h('span', { class: 'muted' }, describeFormat(batch.export)),
        h('span', { class: 'spacer' }),
        h('span', { class: 'muted' }, 'Started ', timeElement(batch.created_at))),
      h('div', { class: 'progress-line' }, bar, h('span', { class: 'muted' }, counts)),
      h('details', { open: true },
        h('summary', {}, 'Tenants'),
        h('div', { class: 'table-scroll', tabindex: 0, role: 'region', 'aria-label': 'Results per tenant' },
          h('table', { class: 'rows results' },
            h('thead', {}, h('tr', {},
              ['Tenant', 'Environment', 'Status', 'Export', 'Reason'].map((name) => h('th', { scope: 'col' }, name)))),
            h('tbody', {}, batch.results.map((result) => h('tr', { 'data-tenant': `${result.tenant_id}/${result.environment_id}` },
              h('td', {}, result.tenant_id),
              h('td', {}, result.environment_id),
              h('td', {}, badge(result.status)),
              h('td', { class: 'mono' }, result.export_id),
              h('td', {}, result.error?.message ?? ''))))))),
      h('p', { class: 'muted small' }, 'Batch ', h('span', { class: 'mono' }, batch.id),
        ' · each tenant downloads its export with its own key.'),
      h('div', { class: 'actions' }, h('button', {
        type: 'button', class: 'ghost small', 'data-action': 'forget',
        on: { click: () => this.forget(batch.id) },
      }, 'Remove from this list')));
  }

  forget(id) {
    this.poller.stop(`batch:${id}`);
    this.cards.get(id)?.remove();
    this.cards.delete(id);
    this.remember(id, false);
    this.empty.hidden = this.cards.size > 0;
  }
}
