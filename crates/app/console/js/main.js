// The console's entry point: sign-in with an API key (kept in sessionStorage), the sections a
// tenant or an operator key opens, and one notice line for what happened.

import * as api from './api.js';
import { h, fill } from './dom.js';
import { BatchesView } from './batches.js';
import { ExportsView } from './exports.js';
import { clearErrors, showErrors } from './forms.js';
import { Poller } from './poller.js';
import { SchedulesView } from './schedules.js';

/** A batch ID that cannot exist: an operator key reads it as `404`, any other key is refused. */
const PROBE_BATCH = '/v1/exports/batch/00000000-0000-0000-0000-000000000000';

const $ = (id) => document.getElementById(id);
const poller = new Poller();
let noticeTimer;

/** Shows `text` in the notice line (`tone`: ok, info, error), with an optional `[label, action]`. */
function notify(text, tone = 'info', action = null) {
  const notice = $('notice');
  notice.dataset.tone = tone;
  fill($('notice-text'), text, action ? ' ' : null, action ? h('button', {
    type: 'button', class: 'link', on: { click: () => { action[1](); notice.hidden = true; } },
  }, action[0]) : null);
  notice.hidden = false;
  clearTimeout(noticeTimer);
  if (tone !== 'error') noticeTimer = setTimeout(() => { notice.hidden = true; }, 6000);
}

const views = {};
let current = null;

function showView(name) {
  if (current === name) return;
  views[current]?.deactivate();
  current = name;
  for (const section of document.querySelectorAll('main > section')) section.hidden = section.id !== `view-${name}`;
  for (const tab of $('nav').querySelectorAll('[data-view]')) {
    if (tab.dataset.view === name) tab.setAttribute('aria-current', 'page');
    else tab.removeAttribute('aria-current');
  }
  sessionStorage.setItem('userexport.view', name);
  views[name]?.activate();
}

function enter(role) {
  const key = api.session.key;
  $('who-label').textContent = `${role === 'operator' ? 'Operator' : 'Tenant'} key …${key.slice(-4)}`;
  $('who').hidden = false;
  $('nav').hidden = false;
  for (const tab of $('nav').querySelectorAll('[data-view]')) tab.hidden = tab.dataset.role !== role;
  const allowed = role === 'operator' ? ['batches'] : ['exports', 'schedules'];
  const remembered = sessionStorage.getItem('userexport.view');
  showView(allowed.includes(remembered) ? remembered : allowed[0]);
}

/** Which kind of key `key` is: `tenant`, `operator`, or an error to show. */
async function identify(key) {
  try {
    await api.get('/v1/exports?limit=1', { key });
    return 'tenant';
  } catch (error) {
    if (error.status !== 401) throw error;
  }
  try {
    await api.get(PROBE_BATCH, { key });
  } catch (error) {
    if (error.status === 404) return 'operator';
    if (error.status === 401) throw new api.ApiError(401, { detail: 'This key is not valid here.' }, null);
    throw error;
  }
  return 'operator';
}

async function signIn(event) {
  event.preventDefault();
  const form = $('signin-form');
  clearErrors(form);
  const key = form.elements.key.value.trim();
  if (!key) {
    showErrors(form, new api.ApiError(0, { errors: [{ field: 'key', message: 'Paste your API key.' }] }, null));
    return;
  }
  const submit = form.querySelector('[type="submit"]');
  submit.disabled = true;
  try {
    const role = await identify(key);
    api.session.start(key, role);
    form.reset();
    enter(role);
  } catch (error) {
    const message = error.status === 429
      ? `Too many attempts; try again in ${Math.ceil(error.retryAfter ?? 6)} s.`
      : error.message;
    showErrors(form, new api.ApiError(error.status, { errors: [{ field: 'key', message }] }, null));
  } finally {
    submit.disabled = false;
  }
}

function signOut(message) {
  poller.stopAll();
  api.session.end();
  if (message) sessionStorage.setItem('userexport.farewell', message);
  window.location.reload();
}

function start() {
  views.exports = new ExportsView(poller, notify);
  views.schedules = new SchedulesView(notify, () => showView('exports'));
  views.batches = new BatchesView(poller, notify);
  $('signin-form').addEventListener('submit', signIn);
  $('sign-out').addEventListener('click', () => signOut());
  $('notice-close').addEventListener('click', () => { $('notice').hidden = true; });
  for (const tab of $('nav').querySelectorAll('[data-view]')) {
    tab.addEventListener('click', () => showView(tab.dataset.view));
  }
  api.on('throttled', (event) => notify(`The API asked to slow down; continuing in ${Math.ceil(event.detail)} s.`));
  api.on('unauthorised', () => signOut('The API refused the key; sign in again.'));
  window.addEventListener('unhandledrejection', (event) => {
    notify(`Something went wrong: ${event.reason?.message ?? event.reason}`, 'error');
  });
  const farewell = sessionStorage.getItem('userexport.farewell');
  sessionStorage.removeItem('userexport.farewell');
  if (api.session.key && api.session.role) {
    enter(api.session.role);
  } else {
    showView('signin');
    if (farewell) notify(farewell, 'error');
    $('signin-key').focus();
  }
}

start();
