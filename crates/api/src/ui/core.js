// atoll's web UI: the router, the API client, live updates and the DOM helpers every page
// uses. Plain JavaScript, no build step; pages register themselves with atoll.page().
//
// A page: atoll.page('/services/:name', {name, title, nav, render(view, params)}).
// `:x` matches one path segment, `*x` the rest of the path (possibly empty). The page's root
// element carries data-page=NAME (`name`, or the pattern's fixed segments joined by '-',
// with '-detail' when the pattern has a parameter, 'overview' for '/'). `render` may return
// a cleanup function; when the route changes it runs and every watch of the page stops.
(function () {
  'use strict';

  const TOKEN_KEY = 'atoll.token';
  const WAIT = '5m';
  const BACKOFF_MS = [1000, 2000, 4000, 8000, 10000];
  const EVENT_DEBOUNCE_MS = 200;
  // Marathon's event types; EventSource delivers a named event only to a listener of its name.
  const EVENT_TYPES = [
    'api_post_event', 'status_update_event', 'framework_message_event', 'subscribe_event',
    'unsubscribe_event', 'add_health_check_event', 'remove_health_check_event',
    'failed_health_check_event', 'health_status_changed_event', 'unhealthy_task_kill_event',
    'unhealthy_instance_kill_event', 'group_change_success', 'group_change_failed',
    'deployment_success', 'deployment_failed', 'deployment_info', 'deployment_step_success',
    'deployment_step_failure', 'app_terminated_event', 'instance_changed_event',
    'instance_health_changed_event', 'unknown_instance_terminated_event',
    'event_stream_attached', 'event_stream_detached',
  ];

  const pages = [];
  let current = null;

  const atoll = {};
  window.atoll = atoll;

  // ---- token -----------------------------------------------------------------------------

  atoll.token = function () {
    try {
      return localStorage.getItem(TOKEN_KEY) || '';
    } catch (e) {
      return '';
    }
  };

  atoll.setToken = function (token) {
    try {
      if (token) localStorage.setItem(TOKEN_KEY, token);
      else localStorage.removeItem(TOKEN_KEY);
    } catch (e) {
      // Storage refused (private mode): the token lasts until the page is left.
    }
  };

  // ---- API -------------------------------------------------------------------------------

  function errorText(status, json, text) {
    let message = '';
    if (json && typeof json === 'object') {
      if (typeof json.error === 'string' && json.error) message = json.error;
      else if (typeof json.message === 'string' && json.message) message = json.message;
    }
    message = message || (text || '').trim() || 'HTTP ' + status;
    if (status === 403) {
      // ACLs: the token (or its absence) does not allow this.
      return message + ': enter an ACL token that allows it in the Token field at the top';
    }
    return message;
  }

  async function request(method, path, body, signal, allow404) {
    const headers = {};
    const token = atoll.token();
    if (token) headers['X-Consul-Token'] = token;
    let payload;
    if (body !== undefined && body !== null) {
      if (typeof body === 'string') {
        payload = body;
      } else {
        payload = JSON.stringify(body);
        headers['Content-Type'] = 'application/json';
      }
    }
    const response = await fetch(path, { method, headers, body: payload, signal });
    const text = await response.text();
    let json = null;
    if (text) {
      try {
        json = JSON.parse(text);
      } catch (e) {
        json = null;
      }
    }
    const header = response.headers.get('X-Consul-Index');
    const index = header === null ? null : Number(header);
    const result = { status: response.status, index, json, text, headers: response.headers };
    if (!response.ok && !(allow404 && response.status === 404)) {
      const error = new Error(errorText(response.status, json, text));
      error.status = response.status;
      error.json = json;
      throw error;
    }
    return result;
  }

  // fetch() of method + path; resolves {status, index, json, text}, rejects with the
  // server's own error text on 4xx/5xx. A string body is sent as it is, anything else as JSON.
  atoll.api = function (method, path, body) {
    return request(method, path, body);
  };

  function sleep(ms, signal) {
    return new Promise((resolve) => {
      if (signal.aborted) return resolve();
      const timer = setTimeout(done, ms);
      signal.addEventListener('abort', done, { once: true });
      function done() {
        clearTimeout(timer);
        signal.removeEventListener('abort', done);
        resolve();
      }
    });
  }

  function isAbort(error) {
    return error && (error.name === 'AbortError');
  }

  // A Consul blocking query loop on `path`: onData(json, index) on the first answer and on
  // every change. Errors are shown in place (in opts.errorIn, else at the top of the page)
  // and retried with backoff; with opts.allow404 a 404 is data (null), as Consul's KV answers
  // a missing key. Stops when the page changes, or when the returned function is called.
  atoll.watch = function (path, onData, opts) {
    const page = current;
    if (!page) throw new Error('atoll.watch outside a page');
    const options = opts || {};
    const controller = new AbortController();
    const stopAll = () => controller.abort();
    page.controller.signal.addEventListener('abort', stopAll, { once: true });
    const signal = controller.signal;
    const box = atoll.h('div', { class: 'error watch-error', hidden: true });
    (options.errorIn || page.view).prepend(box);
    const separator = path.includes('?') ? '&' : '?';
    (async () => {
      let index = 0;
      let failures = 0;
      while (!signal.aborted) {
        const url = index > 0 ? path + separator + 'index=' + index + '&wait=' + WAIT : path;
        let result;
        try {
          result = await request('GET', url, undefined, signal, options.allow404);
        } catch (error) {
          if (signal.aborted || isAbort(error)) return;
          const delay = BACKOFF_MS[Math.min(failures, BACKOFF_MS.length - 1)];
          failures += 1;
          box.hidden = false;
          box.textContent = error.message + ' (retrying in ' + delay / 1000 + ' s)';
          // The next read does not block: the server may have restarted with a lower index,
          // which a blocking query on the old one would wait out.
          index = 0;
          await sleep(delay, signal);
          continue;
        }
        if (signal.aborted) return;
        failures = 0;
        box.hidden = true;
        box.textContent = '';
        const next = result.index || 0;
        if (next === 0) {
          // No index to block on: a plain read, repeated slowly rather than in a loop.
          onData(result.status === 404 ? null : result.json, 0);
          markRendered(page);
          await sleep(BACKOFF_MS[BACKOFF_MS.length - 1], signal);
          continue;
        }
        // An index that went backwards (a restored snapshot) restarts the query, as Consul
        // asks of its clients.
        if (next < index) {
          index = 0;
          continue;
        }
        if (next === index) continue;
        index = next;
        onData(result.status === 404 ? null : result.json, index);
        markRendered(page);
      }
    })();
    return stopAll;
  };

  // Marathon's /v2/events over one shared EventSource: onEvent(event) for every event that
  // filterFn(event) accepts, debounced (several events in 200 ms make one call, with the
  // last). Pages refetch on it. Stops when the page changes.
  const eventSubscribers = new Set();
  let eventSource = null;

  function dispatchEvent(message) {
    let event;
    try {
      event = JSON.parse(message.data);
    } catch (e) {
      return;
    }
    for (const subscriber of eventSubscribers) {
      if (!subscriber.filter || subscriber.filter(event)) subscriber.push(event);
    }
  }

  function openEvents() {
    if (eventSource) return;
    // EventSource sends no headers: the token goes in the query.
    const token = atoll.token();
    eventSource = new EventSource(token ? '/v2/events?token=' + encodeURIComponent(token) : '/v2/events');
    for (const type of EVENT_TYPES) eventSource.addEventListener(type, dispatchEvent);
    eventSource.onmessage = dispatchEvent;
  }

  function closeEventsIfIdle() {
    if (eventSource && eventSubscribers.size === 0) {
      eventSource.close();
      eventSource = null;
    }
  }

  atoll.watchEvents = function (filterFn, onEvent, opts) {
    const page = current;
    if (!page) throw new Error('atoll.watchEvents outside a page');
    const debounce = opts && opts.debounce !== undefined ? opts.debounce : EVENT_DEBOUNCE_MS;
    let timer = null;
    let last = null;
    const subscriber = {
      filter: filterFn,
      push(event) {
        if (debounce <= 0) return onEvent(event);
        last = event;
        if (timer === null) {
          timer = setTimeout(() => {
            timer = null;
            onEvent(last);
          }, debounce);
        }
      },
    };
    const stop = () => {
      if (timer !== null) clearTimeout(timer);
      timer = null;
      eventSubscribers.delete(subscriber);
      closeEventsIfIdle();
    };
    eventSubscribers.add(subscriber);
    page.controller.signal.addEventListener('abort', stop, { once: true });
    openEvents();
    return stop;
  };

  // ---- rendering marks -------------------------------------------------------------------

  // The first render of a page with its data sets performance mark 'atoll-rendered' (once
  // per page shown) and data-rendered on the page's root. Watches mark it on their first
  // data; a page that reads otherwise calls atoll.rendered().
  function markRendered(page) {
    if (!page || page.rendered || page !== current) return;
    page.rendered = true;
    page.view.dataset.rendered = 'true';
    performance.mark('atoll-rendered');
  }

  atoll.rendered = function () {
    markRendered(current);
  };

  // ---- DOM helpers -----------------------------------------------------------------------

  // h('a', {class, href, text, onclick, 'data-x': ...}, ...children). Children are nodes,
  // strings, numbers, or arrays of them; null and false are skipped.
  atoll.h = function (tag, attrs, ...children) {
    const element = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key === 'text') element.textContent = String(value);
      else if (key === 'class') element.className = value;
      else if (key.startsWith('on') && typeof value === 'function') {
        element.addEventListener(key.slice(2), value);
      } else if (key === 'value') element.value = value;
      else if (value === true) element.setAttribute(key, '');
      else element.setAttribute(key, String(value));
    }
    append(element, children);
    return element;
  };

  function append(element, children) {
    for (const child of children) {
      if (child === undefined || child === null || child === false) continue;
      if (Array.isArray(child)) append(element, child);
      else if (child instanceof Node) element.appendChild(child);
      else element.appendChild(document.createTextNode(String(child)));
    }
  }

  // Encodes each segment of a path for a hash link, keeping its slashes.
  atoll.enc = function (path) {
    return String(path).split('/').map(encodeURIComponent).join('/');
  };

  atoll.link = function (hashPath, text, attrs) {
    const href = hashPath.startsWith('#') ? hashPath : '#' + hashPath;
    return atoll.h('a', Object.assign({ href }, attrs || {}), text === undefined ? hashPath : text);
  };

  const BADGES = {
    passing: 'good', running: 'good', healthy: 'good', alive: 'good', leader: 'good',
    task_running: 'good', success: 'good',
    warning: 'warn', staged: 'warn', starting: 'warn', waiting: 'warn', deploying: 'warn',
    task_staging: 'warn', task_starting: 'warn', delayed: 'warn', suspended: 'neutral',
    critical: 'bad', failed: 'bad', failing: 'bad', unhealthy: 'bad', lost: 'bad',
    killed: 'bad', dead: 'bad', left: 'neutral', task_failed: 'bad', task_lost: 'bad',
    task_killed: 'bad', error: 'bad', maintenance: 'warn',
  };

  atoll.badge = function (status, text) {
    const key = String(status || '').toLowerCase();
    return atoll.h('span', {
      class: 'badge badge-' + (BADGES[key] || 'neutral'),
      'data-status': key,
      text: text === undefined ? status : text,
    });
  };

  // A message shown in place of (or above) content; never alert().
  atoll.error = function (container, err) {
    const message = err && err.message ? err.message : String(err);
    const box = atoll.h('div', { class: 'error', role: 'alert', text: message });
    if (container) container.prepend(box);
    return box;
  };

  atoll.notice = function (container, text) {
    const box = atoll.h('div', { class: 'notice', text });
    if (container) container.prepend(box);
    return box;
  };

  // A sortable table with an optional search box. columns: [{title, value(row) → node or
  // string, sort(row) → comparable, key?}]; opts: {filter, empty, key(row) → data-row,
  // placeholder}. Returns an element with .update(rows) to re-render in place, keeping the
  // filter text and sort order.
  atoll.table = function (columns, rows, opts) {
    const options = opts || {};
    const wrapper = atoll.h('div', { class: 'table-wrap' });
    let data = rows || [];
    let sortColumn = null;
    let sortDescending = false;
    let search = null;
    if (options.filter) {
      search = atoll.h('input', {
        type: 'search',
        class: 'filter',
        placeholder: options.placeholder || 'Filter',
        'aria-label': 'Filter',
        oninput: draw,
      });
      wrapper.appendChild(atoll.h('div', { class: 'table-tools' }, search));
    }
    const head = atoll.h('tr', {});
    columns.forEach((column, i) => {
      const th = atoll.h('th', { text: column.title });
      if (column.sort || column.value) {
        th.classList.add('sortable');
        th.addEventListener('click', () => {
          if (sortColumn === i) sortDescending = !sortDescending;
          else {
            sortColumn = i;
            sortDescending = false;
          }
          draw();
        });
      }
      head.appendChild(th);
    });
    const body = atoll.h('tbody', {});
    const table = atoll.h('table', { class: 'grid' }, atoll.h('thead', {}, head), body);
    wrapper.appendChild(table);
    const count = atoll.h('div', { class: 'table-count' });
    wrapper.appendChild(count);

    function cellNode(column, row) {
      const value = column.value(row);
      if (value instanceof Node) return value;
      return document.createTextNode(value === undefined || value === null ? '' : String(value));
    }

    function sortKey(column, row) {
      if (column.sort) return column.sort(row);
      const value = column.value(row);
      return value instanceof Node ? value.textContent : value;
    }

    function draw() {
      const needle = search ? search.value.trim().toLowerCase() : '';
      let shown = data.map((row) => ({ row, cells: columns.map((c) => cellNode(c, row)) }));
      if (needle) {
        shown = shown.filter((entry) =>
          entry.cells.some((cell) => cell.textContent.toLowerCase().includes(needle)));
      }
      if (sortColumn !== null) {
        const column = columns[sortColumn];
        shown.sort((a, b) => {
          const x = sortKey(column, a.row);
          const y = sortKey(column, b.row);
          const order = typeof x === 'number' && typeof y === 'number'
            ? x - y : String(x).localeCompare(String(y), undefined, { numeric: true });
          return sortDescending ? -order : order;
        });
      }
      head.querySelectorAll('th').forEach((th, i) => {
        th.classList.toggle('sorted', i === sortColumn);
        th.classList.toggle('descending', i === sortColumn && sortDescending);
      });
      body.replaceChildren();
      for (const entry of shown) {
        const tr = atoll.h('tr', { 'data-row': options.key ? options.key(entry.row) : undefined });
        entry.cells.forEach((cell, i) => {
          tr.appendChild(atoll.h('td', { class: columns[i].class }, cell));
        });
        body.appendChild(tr);
      }
      if (shown.length === 0) {
        const text = data.length === 0 ? (options.empty || 'Nothing here.') : 'No match.';
        body.appendChild(atoll.h('tr', { class: 'empty' },
          atoll.h('td', { colspan: columns.length, text })));
      }
      count.textContent = needle ? shown.length + ' of ' + data.length : data.length + ' total';
    }

    wrapper.update = function (next) {
      data = next || [];
      draw();
    };
    draw();
    return wrapper;
  };

  // An in-page modal dialog; resolves true on confirm, false on cancel or Escape.
  atoll.confirmDialog = function (text, opts) {
    const options = opts || {};
    return new Promise((resolve) => {
      const root = document.getElementById('dialog-root') || document.body;
      const close = (answer) => {
        document.removeEventListener('keydown', onKey);
        overlay.remove();
        resolve(answer);
      };
      const onKey = (event) => {
        if (event.key === 'Escape') close(false);
      };
      const confirm = atoll.h('button', {
        class: 'button ' + (options.danger === false ? 'primary' : 'danger'),
        'data-action': 'confirm',
        onclick: () => close(true),
        text: options.confirm || 'Confirm',
      });
      const overlay = atoll.h('div', { class: 'overlay' },
        atoll.h('div', { class: 'dialog', role: 'dialog', 'aria-modal': 'true' },
          atoll.h('p', { class: 'dialog-text', text }),
          atoll.h('div', { class: 'dialog-buttons' },
            atoll.h('button', {
              class: 'button', 'data-action': 'cancel', onclick: () => close(false), text: 'Cancel',
            }),
            confirm)));
      document.addEventListener('keydown', onKey);
      root.appendChild(overlay);
      confirm.focus();
    });
  };

  // A form: fields [{name, label, type ('text', 'textarea', 'number', 'select'), value,
  // options, placeholder, required}], onSubmit(values) → Promise. Errors of onSubmit are shown
  // in the form; the submit button is disabled while it runs.
  atoll.form = function (fields, onSubmit, opts) {
    const options = opts || {};
    const inputs = {};
    const errorBox = atoll.h('div', { class: 'error', hidden: true });
    const form = atoll.h('form', { class: 'form', 'data-form': options.name });
    form.appendChild(errorBox);
    for (const field of fields) {
      let input;
      const common = {
        name: field.name,
        placeholder: field.placeholder,
        required: field.required,
        readonly: field.readonly,
        'data-field': field.name,
      };
      if (field.type === 'textarea') {
        input = atoll.h('textarea', Object.assign({ rows: field.rows || 8, spellcheck: 'false' }, common));
        input.value = field.value === undefined ? '' : field.value;
      } else if (field.type === 'select') {
        input = atoll.h('select', common,
          (field.options || []).map((o) => atoll.h('option', { value: o, text: o })));
        if (field.value !== undefined) input.value = field.value;
      } else {
        input = atoll.h('input', Object.assign({ type: field.type || 'text', step: field.step,
          min: field.min }, common));
        input.value = field.value === undefined ? '' : field.value;
      }
      inputs[field.name] = input;
      form.appendChild(atoll.h('label', { class: 'field' },
        atoll.h('span', { class: 'field-label', text: field.label || field.name }), input));
    }
    const submit = atoll.h('button', {
      type: 'submit', class: 'button primary', 'data-action': options.action || 'submit',
      text: options.submit || 'Save',
    });
    const buttons = atoll.h('div', { class: 'form-buttons' }, submit, options.extra || null);
    form.appendChild(buttons);
    form.addEventListener('submit', async (event) => {
      event.preventDefault();
      const values = {};
      for (const [name, input] of Object.entries(inputs)) values[name] = input.value;
      submit.disabled = true;
      errorBox.hidden = true;
      try {
        await onSubmit(values);
      } catch (error) {
        errorBox.textContent = error && error.message ? error.message : String(error);
        errorBox.hidden = false;
      } finally {
        submit.disabled = false;
      }
    });
    form.inputs = inputs;
    form.showError = (error) => {
      errorBox.textContent = error && error.message ? error.message : String(error);
      errorBox.hidden = false;
    };
    return form;
  };

  // Small formatters shared by the pages.
  atoll.fmt = {
    number(value, digits) {
      if (value === undefined || value === null || Number.isNaN(value)) return '';
      const d = digits === undefined ? 2 : digits;
      return Number(value).toFixed(d).replace(/\.?0+$/, '') || '0';
    },
    mem(mib) {
      if (mib === undefined || mib === null) return '';
      return mib >= 1024 ? atoll.fmt.number(mib / 1024, 1) + ' GiB' : atoll.fmt.number(mib, 0) + ' MiB';
    },
    time(value) {
      if (!value) return '';
      const date = new Date(value);
      return Number.isNaN(date.getTime()) ? String(value) : date.toLocaleString();
    },
  };

  // ---- pages and routing -----------------------------------------------------------------

  function compile(pattern) {
    const names = [];
    let source = '';
    const segments = pattern.split('/').filter((s) => s !== '');
    for (const segment of segments) {
      if (segment.startsWith('*')) {
        names.push({ name: segment.slice(1), rest: true });
        source += '(?:/(.*))?';
      } else if (segment.startsWith(':')) {
        names.push({ name: segment.slice(1), rest: false });
        source += '/([^/]+)';
      } else {
        source += '/' + segment.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
      }
    }
    const regex = new RegExp('^' + (source || '') + '/?$');
    return { regex, names };
  }

  function defaultName(pattern) {
    const segments = pattern.split('/').filter((s) => s !== '');
    const fixed = segments.filter((s) => !s.startsWith(':') && !s.startsWith('*'));
    if (segments.length === 0) return 'overview';
    return fixed.join('-') + (fixed.length < segments.length ? '-detail' : '');
  }

  atoll.page = function (pattern, spec) {
    const compiled = compile(pattern);
    pages.push(Object.assign({ pattern, name: spec.name || defaultName(pattern) }, spec, compiled));
  };

  function currentPath() {
    const hash = location.hash.replace(/^#/, '');
    return hash === '' ? '/' : hash;
  }

  function match(path) {
    for (const page of pages) {
      const found = page.regex.exec(path);
      if (!found) continue;
      const params = {};
      page.names.forEach((param, i) => {
        const raw = found[i + 1] || '';
        try {
          params[param.name] = param.rest
            ? raw.split('/').map(decodeURIComponent).join('/')
            : decodeURIComponent(raw);
        } catch (e) {
          params[param.name] = raw;
        }
      });
      return { page, params };
    }
    return null;
  }

  function stopCurrent() {
    if (!current) return;
    const leaving = current;
    current = null;
    leaving.controller.abort();
    if (typeof leaving.cleanup === 'function') {
      try {
        leaving.cleanup();
      } catch (error) {
        console.error(error);
      }
    }
  }

  function highlightNav(path) {
    const first = path.split('/').filter((s) => s !== '')[0] || '';
    document.querySelectorAll('#nav a').forEach((a) => {
      a.classList.toggle('active', a.dataset.section === first);
    });
  }

  function route() {
    stopCurrent();
    const path = currentPath();
    const container = document.getElementById('view');
    const found = match(path);
    highlightNav(path);
    const view = atoll.h('section', { class: 'page' });
    container.replaceChildren(view);
    if (!found) {
      view.dataset.page = 'not-found';
      view.appendChild(atoll.h('h1', { text: 'Not found' }));
      atoll.error(view, new Error('No page at ' + path));
      document.title = 'atoll';
      return;
    }
    view.dataset.page = found.page.name;
    const page = { view, controller: new AbortController(), rendered: false, cleanup: null };
    current = page;
    const title = typeof found.page.title === 'function'
      ? found.page.title(found.params) : found.page.title;
    document.title = title ? title + ' · atoll' : 'atoll';
    try {
      page.cleanup = found.page.render(view, found.params) || null;
    } catch (error) {
      console.error(error);
      atoll.error(view, error);
    }
  }

  // Navigates to a hash path (as a link click would).
  atoll.go = function (hashPath) {
    location.hash = hashPath.startsWith('#') ? hashPath : '#' + hashPath;
  };

  function buildNav() {
    const nav = document.getElementById('nav');
    if (!nav) return;
    nav.replaceChildren();
    for (const page of pages) {
      if (!page.nav) continue;
      const section = page.pattern.split('/').filter((s) => s !== '')[0] || '';
      const segments = page.pattern.split('/').filter((s) => s !== '');
      const fixedEnd = segments.findIndex((s) => s.startsWith(':') || s.startsWith('*'));
      const prefix = '/' + (fixedEnd < 0 ? segments : segments.slice(0, fixedEnd)).join('/');
      const href = '#' + (page.navPath || prefix);
      nav.appendChild(atoll.h('a', { href, 'data-section': section, 'data-nav': page.name, text: page.nav }));
    }
  }

  function setupToken() {
    const input = document.getElementById('token');
    if (!input) return;
    input.value = atoll.token();
    input.addEventListener('change', () => {
      atoll.setToken(input.value.trim());
      route();
    });
  }

  async function showDatacenter() {
    const target = document.getElementById('datacenter');
    if (!target) return;
    try {
      const self = await atoll.api('GET', '/v1/agent/self');
      const config = (self.json && self.json.Config) || {};
      atoll.datacenter = config.Datacenter || '';
      target.textContent = atoll.datacenter;
      target.title = 'Datacenter ' + atoll.datacenter + ', node ' + (config.NodeName || '');
    } catch (error) {
      target.textContent = '?';
      target.title = error.message;
    }
  }

  function start() {
    buildNav();
    setupToken();
    showDatacenter();
    window.addEventListener('hashchange', route);
    route();
  }

  // Every script is loaded (they sit at the end of the body) before this fires.
  document.addEventListener('DOMContentLoaded', start);
})();
