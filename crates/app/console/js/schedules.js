// The Schedules view: the tenant's schedules with their next fire, the form that creates one
// (previewing the next fires as the cron is typed, computed by the API), and pause, resume,
// run now and delete.

import * as api from './api.js';
import { fill, h, say } from './dom.js';
import { badge, describeFilters, describeFormat } from './export_row.js';
import { formatDate, formatInZone, formatRelative, timeElement, viewerTimeZone } from './format.js';
import { clearErrors, disclosure, mountRequestFields, readRequest, showErrors } from './forms.js';

const PREVIEW_DELAY_MS = 350;
const CONFIRM_MS = 4000;

export class SchedulesView {
  constructor(notify, showExports) {
    this.notify = notify;
    this.showExports = showExports;
    this.cursor = null;
    this.list = document.getElementById('schedule-list');
    this.empty = document.getElementById('schedule-empty');
    this.more = document.getElementById('schedule-more');
    this.form = document.getElementById('schedule-create');
    this.cron = document.getElementById('schedule-cron');
    this.timezone = document.getElementById('schedule-timezone');
    this.fires = document.getElementById('schedule-preview');
    this.fields = mountRequestFields(this.form.querySelector('[data-slot="request"]'));
    this.timezone.value = viewerTimeZone;
    const zones = typeof Intl.supportedValuesOf === 'function' ? Intl.supportedValuesOf('timeZone') : [];
    fill(document.getElementById('timezones'), ['UTC', ...zones].map((zone) => h('option', { value: zone })));
    this.idempotencyKey = api.newIdempotencyKey();
    this.close = disclosure(document.getElementById('schedule-new'), this.form, () => {
      this.idempotencyKey = api.newIdempotencyKey();
      this.previewSoon();
    });
    for (const input of [this.cron, this.timezone]) input.addEventListener('input', () => this.previewSoon());
    for (const chip of this.form.querySelectorAll('[data-cron]')) {
      chip.addEventListener('click', () => {
        this.cron.value = chip.dataset.cron;
        this.previewSoon();
      });
    }
    this.form.addEventListener('submit', (event) => {
      event.preventDefault();
      this.create();
    });
    document.getElementById('schedule-refresh').addEventListener('click', () => this.load());
    this.more.addEventListener('click', () => this.load(this.cursor));
  }

  activate() {
    this.load();
  }

  deactivate() {}

  async load(cursor = null) {
    const query = new URLSearchParams({ limit: '20' });
    if (cursor) query.set('cursor', cursor);
    let page;
    try {
      page = (await api.get(`/v1/export-schedules?${query}`)).data;
    } catch (error) {
      this.notify(`Could not list schedules: ${error.message}`, 'error');
      return;
    }
    if (!cursor) this.list.replaceChildren();
    for (const schedule of page.items) this.list.append(this.card(schedule));
    this.cursor = page.next_cursor;
    this.more.hidden = !this.cursor;
    this.empty.hidden = this.list.children.length > 0;
  }

  previewSoon() {
    clearTimeout(this.previewTimer);
    this.previewTimer = setTimeout(() => this.preview(), PREVIEW_DELAY_MS);
  }

  /** Asks the API for the next fires of the cron being typed; its errors go next to the fields. */
  async preview() {
    const body = { cron: this.cron.value, timezone: this.timezone.value.trim() || null, count: 5 };
    const asked = JSON.stringify(body);
    this.asked = asked;
    try {
      const { data } = await api.post('/v1/export-schedules/preview', body);
      if (this.asked !== asked) return;
      for (const name of ['cron', 'timezone']) this.clearField(name);
      const zone = data.timezone;
      fill(this.fires, data.next_fires.map((fire) => h('li', {},
        timeElement(fire, formatInZone(fire, zone)),
        zone === viewerTimeZone ? null : h('span', { class: 'muted' }, ` · ${formatDate(fire)} your time`),
        h('span', { class: 'muted' }, ` · ${formatRelative(fire)}`))));
    } catch (error) {
      if (this.asked !== asked) return;
      fill(this.fires);
      if (error.fieldErrors.length) {
        showErrors(this.form, error, { focus: false });
      } else {
        this.notify(`Could not preview: ${error.message}`, 'error');
      }
    }
  }

  clearField(name) {
    const field = this.form.querySelector(`.field[data-field="${name}"]`);
    field.classList.remove('invalid');
    say(field.querySelector('.field-error'), '');
    for (const control of field.querySelectorAll('[aria-invalid]')) control.removeAttribute('aria-invalid');
  }

  async create() {
    clearErrors(this.form);
    const body = {
      cron: this.cron.value,
      timezone: this.timezone.value.trim() || null,
      request: readRequest(this.fields),
    };
    const note = this.form.elements.note.value.trim();
    if (note) body.note = note;
    if (this.form.elements.paused.checked) body.paused = true;
    try {
      await api.post('/v1/export-schedules', body, { idempotencyKey: this.idempotencyKey });
      this.close();
      this.notify('Schedule created.', 'ok');
      this.load();
    } catch (error) {
      showErrors(this.form, error);
    }
  }

  card(schedule) {
    const element = h('li', { class: 'card schedule', 'data-id': schedule.id });
    this.render(element, schedule);
    return element;
  }

  render(element, s) {
    const request = s.request;
    const next = s.next_fire_at
      ? h('span', {}, 'Next ', timeElement(s.next_fire_at), ` (${formatRelative(s.next_fire_at)})`)
      : h('span', { class: 'muted' }, s.paused ? 'Paused: no fires' : 'No upcoming fire');
    const button = (action, label, style, handler) => h('button', {
      type: 'button', class: `${style} small`, 'data-action': action, on: { click: () => handler(element, s) },
    }, label);
    fill(element,
      h('div', { class: 'card-head' },
        badge(s.paused ? 'paused' : 'active'),
        h('code', { class: 'cron' }, s.cron),
        h('span', { class: 'muted' }, s.timezone),
        h('span', { class: 'spacer' }),
        next),
      s.note ? h('p', { class: 'note' }, s.note) : null,
      h('p', { class: 'facts' }, `${describeFormat(request)} of ${describeFilters(request.user_filters, request.limit)}`),
      h('div', { class: 'actions' },
        s.paused
          ? button('resume', 'Resume', 'ghost', (el, sch) => this.setPaused(el, sch, false))
          : button('pause', 'Pause', 'ghost', (el, sch) => this.setPaused(el, sch, true)),
        button('trigger', 'Run now', 'ghost', (el, sch) => this.trigger(el, sch)),
        button('delete', 'Delete', 'danger', (el, sch) => this.remove(el, sch))),
      h('p', { class: 'report', role: 'status', hidden: true }));
  }

  report(element, text, tone = 'info') {
    const line = element.querySelector('.report');
    line.hidden = false;
    line.dataset.tone = tone;
    line.textContent = text;
  }

  async setPaused(element, schedule, paused) {
    try {
      const { data } = await api.patch(schedule.links.self, { paused });
      this.render(element, data);
      element.querySelector(`[data-action="${paused ? 'resume' : 'pause'}"]`)?.focus();
    } catch (error) {
      this.report(element, error.message, 'error');
    }
  }

  async trigger(element, schedule) {
    try {
      const { data } = await api.post(schedule.links.trigger);
      this.report(element, `Started export ${data.id}; it is listed under Exports.`, 'ok');
      this.notify('Export started from the schedule.', 'ok', ['Show exports', this.showExports]);
    } catch (error) {
      this.report(element, error.message, 'error');
    }
  }

  /** Deletes after a second click on the same button within a few seconds. */
  async remove(element, schedule) {
    const button = element.querySelector('[data-action="delete"]');
    if (!button.dataset.armed) {
      button.dataset.armed = 'true';
      button.textContent = 'Confirm delete';
      setTimeout(() => {
        delete button.dataset.armed;
        button.textContent = 'Delete';
      }, CONFIRM_MS);
      return;
    }
    try {
      await api.remove(schedule.links.self);
      element.remove();
      this.empty.hidden = this.list.children.length > 0;
      this.notify('Schedule deleted; exports it started go on.', 'ok');
    } catch (error) {
      this.report(element, error.message, 'error');
    }
  }
}
