// The Marathon pages of the web UI: apps, one app, deploy, deployments, queue and events.
// Plain JavaScript over the core library (core.js, `window.atoll`) and the /v2 API.
(function () {
  'use strict';

  const atoll = window.atoll;
  if (!atoll) {
    return;
  }

  // Marathon events after which the app, deployment and queue pages are out of date. The
  // stream's first event (`event_stream_attached`, also after a reconnection) is one: what
  // changed between a page's first read and the stream's start is read again.
  const WORKLOAD_EVENTS = new Set([
    'event_stream_attached',
    'status_update_event',
    'health_status_changed_event',
    'deployment_info',
    'deployment_success',
    'deployment_failed',
    'deployment_step_success',
    'deployment_step_failure',
    'api_post_event',
    'app_terminated_event',
  ]);

  // How many events the events page keeps.
  const EVENT_LIMIT = 200;

  // ---------------------------------------------------------------------------
  // small helpers

  const el = atoll.h;

  // `/prod/web` → `prod/web`, for hash paths.
  function bareId(id) {
    return String(id || '').replace(/^\/+/, '');
  }

  function appLink(id) {
    return atoll.link('/apps/' + bareId(id), id);
  }

  function appPath(id) {
    return '/v2/apps/' + bareId(id).split('/').map(encodeURIComponent).join('/');
  }

  function mono(text) {
    return el('span', { class: 'mono', text: String(text) });
  }

  function num(value) {
    if (typeof value !== 'number') {
      return '';
    }
    return Number.isInteger(value) ? String(value) : String(Math.round(value * 1000) / 1000);
  }

  // "3m ago" for an RFC 3339 time, with the time itself as the tooltip.
  function ago(iso) {
    if (!iso) {
      return '';
    }
    const at = Date.parse(iso);
    if (Number.isNaN(at)) {
      return String(iso);
    }
    const seconds = Math.max(0, Math.round((Date.now() - at) / 1000));
    let text;
    if (seconds < 60) {
      text = seconds + 's ago';
    } else if (seconds < 3600) {
      text = Math.floor(seconds / 60) + 'm ago';
    } else if (seconds < 86400) {
      text = Math.floor(seconds / 3600) + 'h ago';
    } else {
      text = Math.floor(seconds / 86400) + 'd ago';
    }
    const node = el('span', { class: 'm-time', text });
    node.title = new Date(at).toISOString();
    return node;
  }

  // `TASK_RUNNING` → `running`.
  function taskState(state) {
    return String(state || 'unknown').replace(/^TASK_/, '').toLowerCase();
  }

  function hasHealthChecks(app) {
    return Array.isArray(app.healthChecks) && app.healthChecks.length > 0;
  }

  // The catalog services the app's tasks registered, from the services summary (the server
  // names them; the summary says which app each instance belongs to).
  function servicesOf(app, summaries) {
    return (summaries || []).filter((s) => (s.Apps || []).includes(app.id)).map((s) => s.Name);
  }

  // What an app is doing, as one word for a badge.
  function appStatus(app, waiting) {
    if (app.deployments && app.deployments.length > 0) {
      return waiting ? 'waiting' : 'deploying';
    }
    if (waiting) {
      return 'waiting';
    }
    if (app.instances === 0) {
      return 'suspended';
    }
    if ((app.tasksUnhealthy || 0) > 0) {
      return 'unhealthy';
    }
    return (app.tasksRunning || 0) >= app.instances ? 'running' : 'staged';
  }

  function instancesText(app) {
    const staged = app.tasksStaged ? ' (+' + app.tasksStaged + ' staged)' : '';
    return (app.tasksRunning || 0) + ' / ' + app.instances + staged;
  }

  function healthCell(app) {
    if (!hasHealthChecks(app)) {
      return el('span', { class: 'muted', text: 'no checks' });
    }
    const parts = [];
    parts.push(el('span', { class: 'm-health m-health-passing', text: (app.tasksHealthy || 0) + ' healthy' }));
    if (app.tasksUnhealthy) {
      parts.push(' ', el('span', { class: 'm-health m-health-critical', text: app.tasksUnhealthy + ' unhealthy' }));
    }
    return el('span', {}, parts);
  }

  // A progress bar: `done` of `total`, with a caption.
  function progress(done, total, caption) {
    const ratio = total > 0 ? Math.max(0, Math.min(1, done / total)) : 1;
    const fill = el('span', {});
    fill.style.width = Math.round(ratio * 100) + '%';
    return el(
      'span',
      { class: 'm-progress', 'data-done': String(done), 'data-total': String(total) },
      el('span', { class: 'bar' }, fill),
      el('span', { class: 'm-progress-text', text: caption || done + ' / ' + total })
    );
  }

  // Marathon's 422 answer lists problems by field path; the error box shows each of them.
  function problemsOf(err) {
    const body = (err && err.json) || null;
    if (!body || !Array.isArray(body.details)) {
      return [];
    }
    const out = [];
    for (const detail of body.details) {
      const errors = Array.isArray(detail.errors) ? detail.errors : [String(detail.errors || '')];
      for (const message of errors) {
        out.push({ path: detail.path || '/', message: String(message) });
      }
    }
    return out;
  }

  // An error in place, with Marathon's field paths when it gave them.
  function showError(box, err) {
    box.textContent = '';
    atoll.error(box, err);
    const problems = problemsOf(err);
    if (problems.length) {
      const list = el(
        'ul',
        { class: 'm-problems' },
        problems.map((p) => el('li', { 'data-path': p.path }, mono(p.path), ': ' + p.message))
      );
      const target = box.querySelector('.error') || box;
      target.appendChild(list);
    }
  }

  function clear(node) {
    node.textContent = '';
  }

  // Requests that a deployment in progress may refuse (409, app locked): offer to force them.
  async function withForce(method, path, body) {
    try {
      return await atoll.api(method, path, body);
    } catch (err) {
      const locked = err && (err.status === 409 || /locked by one or more deployments/i.test(err.message || ''));
      if (!locked) {
        throw err;
      }
      const ok = await atoll.confirmDialog(
        'A deployment is in progress for this app. Override it and apply this change now?'
      );
      if (!ok) {
        throw new Error('Not applied: a deployment is in progress (' + err.message + ')');
      }
      return atoll.api(method, path + (path.includes('?') ? '&' : '?') + 'force=true', body);
    }
  }

  // Runs `load` now and again after each relevant Marathon event (core.js shares one event
  // stream and debounces). An answer that arrives after a newer one started is dropped, and
  // the page is marked rendered after its first data.
  function liveRefresh(relevant, load) {
    let latest = 0;
    const refresh = async () => {
      const mine = ++latest;
      const stale = () => mine !== latest;
      await load(stale);
      if (!stale()) {
        atoll.rendered();
      }
    };
    atoll.watchEvents((event) => WORKLOAD_EVENTS.has(event.eventType) && relevant(event), refresh);
    refresh();
    return refresh;
  }

  // The definition as a user edits it: what `GET /v2/apps/{id}` adds about the running app left out.
  const STATUS_FIELDS = [
    'tasks',
    'tasksRunning',
    'tasksStaged',
    'tasksHealthy',
    'tasksUnhealthy',
    'deployments',
    'lastTaskFailure',
    'taskStats',
    'readinessCheckResults',
    'versionInfo',
    'version',
    'counts',
  ];

  function definitionOf(app) {
    const copy = {};
    for (const [key, value] of Object.entries(app)) {
      if (!STATUS_FIELDS.includes(key)) {
        copy[key] = value;
      }
    }
    return copy;
  }

  function parseJson(text) {
    try {
      return JSON.parse(text);
    } catch (err) {
      throw new Error('The definition is not valid JSON: ' + err.message);
    }
  }

  function injectStyle() {
    if (document.getElementById('marathon-style')) {
      return;
    }
    const style = document.createElement('style');
    style.id = 'marathon-style';
    style.textContent = [
      '.m-progress{display:inline-flex;align-items:center;gap:8px}',
      '.m-progress .bar{width:120px;margin-top:0}',
      '.m-progress-text{font-variant-numeric:tabular-nums}',
      '.m-health-passing{color:var(--good,#2b8a3e)}',
      '.m-health-critical{color:var(--bad,#c92a2a);font-weight:600}',
      '.m-problems{margin:6px 0 0 18px;padding:0}',
      '.m-json{width:100%;min-height:320px;font-family:var(--mono,monospace);font-size:13px;box-sizing:border-box;padding:8px;border:1px solid var(--line,#ccc);border-radius:4px;resize:vertical}',
      '.m-actions{display:flex;gap:8px;align-items:center;flex-wrap:wrap}',
      '.m-actions input[type=number]{width:80px;margin-left:6px;padding:5px 8px;border:1px solid #cfd4dc;border-radius:4px;font:inherit}',
      '.m-reasons{margin:0 0 0 18px;padding:0}',
      '.m-reasons li{margin:2px 0}',
      '.m-note{border-left:4px solid var(--accent,#2f6fdf);background:#eef4ff;padding:8px 12px;border-radius:4px;margin:0 0 12px}',
      '.m-note.m-waiting{border-left-color:var(--warn,#e8590c);background:#fff4e6}',
      '.m-note.m-failure{border-left-color:var(--bad,#c92a2a);background:#fff5f5}',
      '.m-note > div{margin-top:4px}',
      '.m-event-json{font-family:var(--mono,monospace);font-size:12px;color:var(--muted,#666);word-break:break-all}',
      '.m-time{white-space:nowrap}',
    ].join('\n');
    document.head.appendChild(style);
  }

  // A page's frame: its title, a row of actions, a box for errors and the body.
  function pageRoot(view, title, subtitle, ...tools) {
    injectStyle();
    const head = el('h1', {}, title, subtitle ? el('span', { class: 'sub', text: subtitle }) : null);
    const actions = el('div', { class: 'actions m-actions' }, tools);
    const errorBox = el('div', { class: 'm-error-box' });
    const body = el('div', { class: 'm-body' });
    view.append(head, actions, errorBox, body);
    return { head, actions, errorBox, body };
  }

  async function fetchQueue() {
    const answer = await atoll.api('GET', '/v2/queue');
    const byApp = new Map();
    for (const item of (answer.json && answer.json.queue) || []) {
      if (item.app && item.app.id) {
        byApp.set(item.app.id, item);
      }
    }
    return byApp;
  }

  function reasonsOf(item) {
    const summary = (item && item.processedOffersSummary) || {};
    const reasons = summary.rejectSummaryLastOffers || [];
    return reasons.map((r) => (typeof r === 'string' ? r : r.reason + (r.declined ? ' (' + r.declined + ' declined)' : '')));
  }

  // #/apps

  atoll.page('/apps', {
    name: 'apps',
    title: 'Apps',
    nav: 'Apps',
    render(view) {
      const deploy = el('a', { href: '#/deploy', class: 'button primary', 'data-action': 'new-app', text: 'Deploy an app' });
      const { errorBox, body } = pageRoot(view, 'Apps', null, deploy);
      let queue = new Map();
      const table = atoll.table(
        [
          { title: 'ID', value: (app) => appLink(app.id), sort: (app) => app.id, class: 'mono' },
          { title: 'Status', value: (app) => atoll.badge(appStatus(app, queue.has(app.id))) },
          { title: 'Running / wanted', value: (app) => instancesText(app), sort: (app) => app.tasksRunning || 0 },
          { title: 'Health', value: (app) => healthCell(app), sort: (app) => app.tasksUnhealthy || 0 },
          { title: 'CPUs', value: (app) => num(app.cpus), sort: (app) => app.cpus },
          { title: 'Memory', value: (app) => atoll.fmt.mem(app.mem), sort: (app) => app.mem },
          { title: 'Version', value: (app) => ago(app.version), sort: (app) => app.version },
        ],
        [],
        { filter: true, placeholder: 'Filter apps', empty: 'No apps yet: deploy one from its JSON definition.', key: (app) => app.id }
      );
      body.appendChild(table);
      liveRefresh(
        () => true,
        async (stale) => {
          try {
            const [apps, waiting] = await Promise.all([atoll.api('GET', '/v2/apps?embed=apps.counts&embed=apps.deployments'), fetchQueue()]);
            if (stale()) {
              return;
            }
            queue = waiting;
            clear(errorBox);
            table.update(((apps.json && apps.json.apps) || []).slice().sort((a, b) => a.id.localeCompare(b.id)));
          } catch (err) {
            showError(errorBox, err);
          }
        }
      );
    },
  });

  // ---------------------------------------------------------------------------
  // #/apps/*id

  function taskColumns(app, onKill) {
    const checked = hasHealthChecks(app);
    return [
      { title: 'Task', value: (t) => t.id, sort: (t) => t.id, class: 'mono' },
      {
        title: 'Host',
        value: (t) => (t.slaveId ? atoll.link('/nodes/' + encodeURIComponent(t.slaveId), t.host || t.slaveId) : t.host || ''),
        sort: (t) => t.host || '',
      },
      { title: 'Ports', value: (t) => (t.ports || []).join(', '), class: 'mono' },
      { title: 'State', value: (t) => atoll.badge(taskState(t.state)), sort: (t) => t.state },
      {
        title: 'Health',
        value: (t) => {
          if (!checked) {
            return el('span', { class: 'muted', text: 'no checks' });
          }
          const results = t.healthCheckResults || [];
          if (!results.length) {
            return atoll.badge('unknown', 'no result yet');
          }
          const alive = results.every((r) => r.alive);
          const failures = Math.max(...results.map((r) => r.consecutiveFailures || 0));
          return el(
            'span',
            {},
            atoll.badge(alive ? 'healthy' : 'unhealthy'),
            failures ? el('span', { class: 'muted', text: ' ' + failures + ' failed in a row' }) : null
          );
        },
      },
      { title: 'Started', value: (t) => ago(t.startedAt || t.stagedAt), sort: (t) => t.startedAt || t.stagedAt || '' },
      { title: 'Version', value: (t) => (t.version === app.version ? 'current' : el('span', {}, 'older, ', ago(t.version))) },
      {
        title: '',
        value: (t) =>
          el('button', { class: 'button danger small', 'data-action': 'kill', 'data-task': t.id, text: 'Kill', onclick: () => onKill(t) }),
      },
    ];
  }

  function factsOf(app, services) {
    const container = app.container || {};
    const docker = container.docker || null;
    const facts = [];
    if (docker) {
      facts.push(['Image', mono(docker.image)], ['Network', docker.network || '']);
    }
    if (app.cmd) {
      facts.push(['Command', mono(app.cmd)]);
    }
    if (Array.isArray(app.args) && app.args.length) {
      facts.push(['Arguments', mono(app.args.join(' '))]);
    }
    facts.push([
      'Resources',
      num(app.cpus) + ' CPUs, ' + atoll.fmt.mem(app.mem) + ' memory' + (app.disk ? ', ' + atoll.fmt.mem(app.disk) + ' disk' : ''),
    ]);
    const ports = (app.portDefinitions || []).map((p) => (p.name ? p.name + ' ' : '') + (p.port || 'any'));
    const mappings = (container.portMappings || []).map((p) => p.containerPort + ' → ' + (p.hostPort || 'any'));
    if (ports.length || mappings.length) {
      facts.push(['Ports', mono(ports.concat(mappings).join(', '))]);
    }
    if (services.length) {
      facts.push(['Services', el('span', {}, services.map((name, i) => [i ? ', ' : null, atoll.link('/services/' + encodeURIComponent(name), name)]))]);
    }
    const labels = Object.entries(app.labels || {});
    if (labels.length) {
      facts.push(['Labels', el('span', {}, labels.map(([k, v]) => el('span', { class: 'tag', text: k + '=' + v })))]);
    }
    if (Array.isArray(app.constraints) && app.constraints.length) {
      facts.push(['Constraints', mono(app.constraints.map((c) => c.join(':')).join(', '))]);
    }
    if (Array.isArray(app.dependencies) && app.dependencies.length) {
      facts.push(['Depends on', el('span', {}, app.dependencies.map((d, i) => [i ? ', ' : null, appLink(d)]))]);
    }
    if (hasHealthChecks(app)) {
      facts.push([
        'Health checks',
        app.healthChecks.map((c) => c.protocol + (c.path ? ' ' + c.path : '') + ' every ' + c.intervalSeconds + ' s').join('; '),
      ]);
    }
    facts.push(['Version', el('span', {}, mono(app.version), ' (', ago(app.version), ')')]);
    return el('dl', { class: 'facts' }, facts.map(([k, v]) => [el('dt', { text: k }), el('dd', {}, v)]));
  }

  function deploymentNote(app, deployment, onCancel) {
    const wanted = app.instances || 0;
    const ready = hasHealthChecks(app) ? app.tasksHealthy || 0 : app.tasksRunning || 0;
    const actions = (deployment.currentActions || []).map((a) => a.action).join(', ');
    return el(
      'div',
      { class: 'm-note m-deploying', 'data-deployment': deployment.id },
      el('strong', { text: 'Deployment in progress ' }),
      mono(deployment.id),
      el(
        'div',
        { class: 'm-actions' },
        (actions ? actions + ', ' : '') + 'step ' + (deployment.currentStep || 1) + ' of ' + (deployment.totalSteps || 1) + ':',
        progress(Math.min(ready, wanted), wanted, ready + ' of ' + wanted + (hasHealthChecks(app) ? ' healthy' : ' running')),
        el('button', { class: 'button small', 'data-action': 'cancel-deployment', text: 'Cancel and roll back', onclick: () => onCancel(deployment) })
      )
    );
  }

  function queueNote(item) {
    const reasons = reasonsOf(item);
    return el(
      'div',
      { class: 'm-note m-waiting', 'data-queue': item.app.id },
      el('strong', { text: item.count + (item.count === 1 ? ' instance waits' : ' instances wait') + ' to be placed' }),
      item.since ? el('span', {}, ' (queued ', ago(item.since), ')') : null,
      reasons.length ? el('ul', { class: 'm-reasons' }, reasons.map((r) => el('li', { class: 'queue-reason', text: r }))) : null
    );
  }

  function failureNote(failure) {
    return el(
      'div',
      { class: 'm-note m-failure' },
      el('strong', { text: 'Last task failure ' }),
      ago(failure.timestamp),
      el('div', {}, mono(failure.taskId || ''), ' ', atoll.badge(taskState(failure.state)), ' ', failure.message || '')
    );
  }

  atoll.page('/apps/*id', {
    name: 'app',
    title: (params) => '/' + bareId(params.id),
    render(view, params) {
      const id = '/' + bareId(params.id);
      view.setAttribute('data-app', id);
      let current = null;
      let editing = false;

      const scaleInput = el('input', { class: 'm-scale', 'data-field': 'instances', type: 'number', min: '0', step: '1' });
      const { actions, errorBox, body } = pageRoot(view, id, null);
      view.insertBefore(el('div', { class: 'crumbs' }, atoll.link('/apps', 'Apps'), ' / ', id), view.firstChild);

      // Runs an action, then shows the app as it is now (unless the action left the page).
      const act = async (work) => {
        clear(errorBox);
        try {
          if ((await work()) !== 'left') {
            await refresh();
          }
        } catch (err) {
          showError(errorBox, err);
        }
      };
      const scale = () =>
        act(async () => {
          const text = scaleInput.value.trim();
          const count = Number(text);
          if (text === '' || !Number.isInteger(count) || count < 0) {
            throw new Error('instances: enter a whole number, 0 or more (got "' + text + '")');
          }
          await withForce('PUT', appPath(id), { instances: count });
        });
      const restart = () =>
        act(async () => {
          if (await atoll.confirmDialog('Restart every task of ' + id + ' (a rolling replacement)?', { danger: false, confirm: 'Restart' })) {
            await withForce('POST', appPath(id) + '/restart');
          }
        });
      const destroy = () =>
        act(async () => {
          if (!(await atoll.confirmDialog('Destroy the app ' + id + ' and stop all its tasks?', { confirm: 'Destroy' }))) {
            return;
          }
          await withForce('DELETE', appPath(id));
          atoll.go('/apps');
          return 'left';
        });
      const kill = (task) =>
        act(async () => {
          if (!(await atoll.confirmDialog('Kill the task ' + task.id + '? The app starts a replacement.', { confirm: 'Kill' }))) {
            return;
          }
          await atoll.api('DELETE', appPath(id) + '/tasks/' + encodeURIComponent(task.id));
        });
      const cancelDeployment = (deployment) =>
        act(async () => {
          if (await atoll.confirmDialog('Cancel the deployment ' + deployment.id + ' and roll the app back?', { confirm: 'Roll back' })) {
            await atoll.api('DELETE', '/v2/deployments/' + encodeURIComponent(deployment.id));
          }
        });

      const editor = el('textarea', { class: 'm-json', 'data-field': 'definition', spellcheck: 'false' });
      const editorError = el('div', { class: 'm-error-box' });
      const closeEditor = () => {
        editing = false;
        editorBox.hidden = true;
        clear(editorError);
      };
      const editorBox = el(
        'div',
        { class: 'panel m-editor', hidden: true },
        el('h3', { text: 'Edit the definition' }),
        editorError,
        editor,
        el(
          'div',
          { class: 'actions' },
          el('button', {
            class: 'button primary',
            'data-action': 'save',
            text: 'Deploy this definition',
            onclick: async () => {
              clear(editorError);
              try {
                await withForce('PUT', appPath(id), parseJson(editor.value));
                closeEditor();
                await refresh();
              } catch (err) {
                showError(editorError, err);
              }
            },
          }),
          el('button', { class: 'button', 'data-action': 'cancel-edit', text: 'Cancel', onclick: closeEditor })
        )
      );

      actions.append(
        el('label', { text: 'Instances' }, scaleInput),
        el('button', { class: 'button primary', 'data-action': 'scale', text: 'Scale', onclick: scale }),
        el('button', { class: 'button', 'data-action': 'restart', text: 'Restart', onclick: restart }),
        el('button', {
          class: 'button',
          'data-action': 'edit',
          text: 'Edit JSON',
          onclick: () => {
            if (current) {
              editing = true;
              editor.value = JSON.stringify(definitionOf(current), null, 2);
              editorBox.hidden = false;
              editor.focus();
            }
          },
        }),
        el('button', { class: 'button danger', 'data-action': 'destroy', text: 'Destroy', onclick: destroy })
      );

      const summary = el('div', { class: 'm-summary meta' });
      const notes = el('div', {});
      const tasks = atoll.table([], [], {});
      const tasksBox = el('div', {});
      const facts = el('div', { class: 'panel' });
      body.append(summary, notes, editorBox, el('h2', { text: 'Tasks' }), tasksBox, el('h2', { text: 'Definition' }), facts);
      tasksBox.appendChild(tasks);

      const refresh = liveRefresh(
        (event) => !event.appId || event.appId === id,
        async (stale) => {
          try {
            const [answer, queue, deployments, summaries] = await Promise.all([
              atoll.api('GET', appPath(id)),
              fetchQueue(),
              atoll.api('GET', '/v2/deployments'),
              atoll.api('GET', '/v1/internal/ui/services'),
            ]);
            if (stale()) {
              return;
            }
            const app = answer.json.app;
            // The count shown follows the app unless the user changed it since it was shown.
            if (current === null || scaleInput.value === String(current.instances)) {
              scaleInput.value = String(app.instances);
            }
            current = app;
            const waiting = queue.get(app.id);
            const mine = (deployments.json || []).filter((d) => (d.affectedApps || []).includes(app.id));
            summary.replaceChildren(
              atoll.badge(appStatus(app, waiting)),
              ' ',
              el('span', { class: 'm-instances', text: instancesText(app) + ' running' }),
              ' · ',
              healthCell(app)
            );
            notes.replaceChildren(
              ...mine.map((d) => deploymentNote(app, d, cancelDeployment)),
              waiting ? queueNote(waiting) : '',
              app.lastTaskFailure ? failureNote(app.lastTaskFailure) : ''
            );
            const rows = (app.tasks || []).slice().sort((a, b) => String(a.id).localeCompare(String(b.id)));
            tasksBox.replaceChildren(atoll.table(taskColumns(app, kill), rows, { filter: rows.length > 5, empty: 'No tasks.', key: (t) => t.id }));
            facts.replaceChildren(factsOf(app, servicesOf(app, summaries.json)));
            if (!editing) {
              clear(errorBox);
            }
          } catch (err) {
            showError(errorBox, err);
          }
        }
      );
    },
  });

  // ---------------------------------------------------------------------------
  // #/deploy

  const EXAMPLE_APP = {
    id: '/example/web',
    cmd: 'python3 -m http.server $PORT0',
    cpus: 0.1,
    mem: 64,
    instances: 2,
    portDefinitions: [{ port: 0, name: 'http' }],
    healthChecks: [{ protocol: 'HTTP', path: '/', portIndex: 0, intervalSeconds: 10 }],
  };

  atoll.page('/deploy', {
    name: 'deploy',
    title: 'Deploy',
    render(view) {
      const { errorBox, body } = pageRoot(view, 'Deploy', 'an app or a group from its Marathon JSON');
      const editor = el('textarea', { class: 'm-json', 'data-field': 'definition', spellcheck: 'false' });
      editor.placeholder = JSON.stringify(EXAMPLE_APP, null, 2);
      const result = el('div', {});
      const submit = async () => {
        clear(errorBox);
        clear(result);
        try {
          if (!editor.value.trim()) {
            throw new Error('Paste an app definition (Marathon JSON) first.');
          }
          const definition = parseJson(editor.value);
          if (definition === null || typeof definition !== 'object' || Array.isArray(definition)) {
            throw new Error('The definition must be one JSON object: an app, or a group with "apps" or "groups".');
          }
          if (Array.isArray(definition.apps) || Array.isArray(definition.groups)) {
            await atoll.api('POST', '/v2/groups', definition);
            result.appendChild(
              el('div', { class: 'm-note' }, 'Group ', mono(definition.id || '/'), ' is being deployed: see ', atoll.link('/deployments', 'Deployments'), '.')
            );
          } else {
            const answer = await atoll.api('POST', '/v2/apps', definition);
            atoll.go('/apps/' + bareId((answer.json && answer.json.id) || definition.id));
          }
        } catch (err) {
          showError(errorBox, err);
        }
      };
      body.appendChild(
        el(
          'div',
          { class: 'panel' },
          editor,
          el(
            'div',
            { class: 'actions' },
            el('button', { class: 'button primary', 'data-action': 'deploy', text: 'Deploy', onclick: submit }),
            el('button', {
              class: 'button',
              'data-action': 'example',
              text: 'Insert an example',
              onclick: () => {
                editor.value = JSON.stringify(EXAMPLE_APP, null, 2);
              },
            })
          ),
          result
        )
      );
      atoll.rendered();
    },
  });

  // ---------------------------------------------------------------------------
  // #/deployments

  atoll.page('/deployments', {
    name: 'deployments',
    title: 'Deployments',
    nav: 'Deployments',
    render(view) {
      const { errorBox, body } = pageRoot(view, 'Deployments', 'in progress');
      let appsById = new Map();
      const cancel = async (deployment, force) => {
        const question = force
          ? 'Stop tracking the deployment ' + deployment.id + '? Its apps keep their new version.'
          : 'Cancel the deployment ' + deployment.id + ' and roll its apps back?';
        if (!(await atoll.confirmDialog(question, { confirm: force ? 'Stop tracking' : 'Roll back' }))) {
          return;
        }
        try {
          await atoll.api('DELETE', '/v2/deployments/' + encodeURIComponent(deployment.id) + (force ? '?force=true' : ''));
          await refresh();
        } catch (err) {
          showError(errorBox, err);
        }
      };
      const readiness = (d) => {
        let ready = 0;
        let wanted = 0;
        for (const id of d.affectedApps || []) {
          const app = appsById.get(id);
          if (app) {
            wanted += app.instances || 0;
            ready += Math.min(app.instances || 0, hasHealthChecks(app) ? app.tasksHealthy || 0 : app.tasksRunning || 0);
          }
        }
        return [ready, wanted];
      };
      const table = atoll.table(
        [
          { title: 'Deployment', value: (d) => d.id, sort: (d) => d.id, class: 'mono' },
          { title: 'Apps', value: (d) => el('span', {}, (d.affectedApps || []).map((id, i) => [i ? ', ' : null, appLink(id)])) },
          {
            title: 'Step',
            value: (d) =>
              el(
                'span',
                {},
                el('span', { class: 'm-step', text: 'step ' + (d.currentStep || 1) + ' of ' + (d.totalSteps || 1) }),
                el('div', { class: 'muted', text: (d.currentActions || []).map((a) => a.action + ' ' + a.app).join(', ') })
              ),
            sort: (d) => d.currentStep || 0,
          },
          {
            title: 'Tasks ready',
            value: (d) => {
              const [ready, wanted] = readiness(d);
              return progress(ready, wanted);
            },
          },
          { title: 'Started', value: (d) => ago(d.version), sort: (d) => d.version },
          {
            title: '',
            value: (d) =>
              el(
                'span',
                { class: 'm-actions' },
                el('button', { class: 'button small', 'data-action': 'cancel-deployment', text: 'Cancel and roll back', onclick: () => cancel(d, false) }),
                el('button', { class: 'button small', 'data-action': 'stop-tracking', text: 'Stop tracking', onclick: () => cancel(d, true) })
              ),
          },
        ],
        [],
        { filter: true, placeholder: 'Filter deployments', empty: 'No deployment in progress.', key: (d) => d.id }
      );
      body.appendChild(table);
      const refresh = liveRefresh(
        () => true,
        async (stale) => {
          try {
            const [deployments, apps] = await Promise.all([atoll.api('GET', '/v2/deployments'), atoll.api('GET', '/v2/apps?embed=apps.counts')]);
            if (stale()) {
              return;
            }
            appsById = new Map(((apps.json && apps.json.apps) || []).map((a) => [a.id, a]));
            clear(errorBox);
            table.update((deployments.json || []).slice().sort((a, b) => String(a.version).localeCompare(String(b.version))));
          } catch (err) {
            showError(errorBox, err);
          }
        }
      );
    },
  });

  // ---------------------------------------------------------------------------
  // #/queue

  atoll.page('/queue', {
    name: 'queue',
    title: 'Queue',
    nav: 'Queue',
    render(view) {
      const { errorBox, body } = pageRoot(view, 'Queue', 'instances that cannot be placed, and why');
      const table = atoll.table(
        [
          { title: 'App', value: (item) => appLink(item.app.id), sort: (item) => item.app.id, class: 'mono' },
          { title: 'Waiting', value: (item) => String(item.count), sort: (item) => item.count },
          { title: 'Each asks for', value: (item) => num(item.app.cpus) + ' CPUs, ' + atoll.fmt.mem(item.app.mem) },
          { title: 'Since', value: (item) => ago(item.since), sort: (item) => item.since || '' },
          {
            title: 'Why it cannot be placed',
            value: (item) => el('ul', { class: 'm-reasons' }, reasonsOf(item).map((r) => el('li', { class: 'queue-reason', text: r }))),
          },
        ],
        [],
        { filter: true, placeholder: 'Filter the queue', empty: 'Nothing waits: every instance is placed.', key: (item) => item.app.id }
      );
      body.appendChild(table);
      liveRefresh(
        () => true,
        async (stale) => {
          try {
            const queue = await fetchQueue();
            if (stale()) {
              return;
            }
            clear(errorBox);
            table.update(Array.from(queue.values()).sort((a, b) => a.app.id.localeCompare(b.app.id)));
          } catch (err) {
            showError(errorBox, err);
          }
        }
      );
    },
  });

  // ---------------------------------------------------------------------------
  // #/events

  function eventSummary(event) {
    switch (event.eventType) {
      case 'status_update_event':
        return [
          atoll.badge(taskState(event.taskStatus)),
          ' ',
          mono(event.taskId || ''),
          event.host ? ' on ' + event.host : null,
          event.message ? ': ' + event.message : null,
        ];
      case 'health_status_changed_event':
        return [atoll.badge(event.alive ? 'healthy' : 'unhealthy'), ' ', mono(event.taskId || event.instanceId || '')];
      case 'deployment_info':
        return ['started ', mono((event.plan && event.plan.id) || '')];
      case 'deployment_success':
      case 'deployment_failed':
        return [mono(event.id || (event.plan && event.plan.id) || '')];
      case 'api_post_event':
        return ['new version of ', mono(event.uri || '')];
      case 'event_stream_attached':
        return ['this page is following the event stream'];
      case 'subscribe_event':
      case 'unsubscribe_event':
        return [mono(event.callbackUrl || '')];
      default:
        return [el('span', { class: 'm-event-json', text: JSON.stringify(event) })];
    }
  }

  // The app an event is about; a deployment's end names only the deployment, whose app the
  // page learnt from its start (`deployments`: deployment id → app id).
  function eventApp(event, deployments) {
    const plan = event.plan && event.plan.id;
    if (event.eventType === 'deployment_success' || event.eventType === 'deployment_failed') {
      const id = event.id || plan;
      const app = deployments.get(id) || '';
      deployments.delete(id);
      return app;
    }
    if (event.appId) {
      return event.appId;
    }
    if (event.appDefinition && event.appDefinition.id) {
      return event.appDefinition.id;
    }
    const actions = event.currentStep && event.currentStep.actions;
    const app = Array.isArray(actions) && actions.length && actions[0].app ? actions[0].app : '';
    if (plan && app) {
      deployments.set(plan, app);
    }
    return app;
  }

  atoll.page('/events', {
    name: 'events',
    title: 'Events',
    nav: 'Events',
    render(view) {
      const filter = el('input', { class: 'filter', type: 'search', 'data-field': 'filter', placeholder: 'Filter events (type, app, task, text)' });
      const count = el('span', { class: 'muted' });
      const { actions, body } = pageRoot(view, 'Events', 'live, newest first');
      actions.append(filter, count);
      const entries = [];
      const deployments = new Map();
      let sequence = 0;
      const tbody = el('tbody', {});
      const empty = el('tr', { class: 'empty' }, el('td', { colspan: '4', text: 'Waiting for events: deploy, scale or kill something.' }));
      tbody.appendChild(empty);
      body.appendChild(
        el(
          'div',
          { class: 'table-wrap' },
          el('table', { class: 'grid m-events' }, el('thead', {}, el('tr', {}, ['Time', 'Type', 'App', 'Details'].map((t) => el('th', { text: t })))), tbody)
        )
      );

      const matches = (entry) =>
        filter.value
          .trim()
          .toLowerCase()
          .split(/\s+/)
          .filter(Boolean)
          .every((word) => entry.text.includes(word));
      const showCount = () => {
        const shown = entries.filter((e) => !e.row.hidden).length;
        count.textContent = entries.length ? shown + ' of ' + entries.length + ' (the last ' + EVENT_LIMIT + ' are kept)' : '';
        empty.hidden = entries.length > 0;
      };
      filter.addEventListener('input', () => {
        for (const entry of entries) {
          entry.row.hidden = !matches(entry);
        }
        showCount();
      });

      const add = (event) => {
        const at = event.timestamp ? new Date(Date.parse(event.timestamp)) : new Date();
        const app = eventApp(event, deployments);
        sequence += 1;
        const row = el(
          'tr',
          { 'data-row': String(sequence), 'data-event': event.eventType || '' },
          el('td', { class: 'm-time', text: Number.isNaN(at.getTime()) ? String(event.timestamp) : at.toLocaleTimeString() }),
          el('td', { class: 'mono', text: event.eventType || 'event' }),
          el('td', {}, app ? appLink(app) : ''),
          el('td', {}, eventSummary(event))
        );
        const entry = { row, text: JSON.stringify(event).toLowerCase() };
        row.hidden = !matches(entry);
        entries.unshift(entry);
        tbody.insertBefore(row, tbody.firstChild);
        while (entries.length > EVENT_LIMIT) {
          entries.pop().row.remove();
        }
        showCount();
      };
      showCount();
      atoll.watchEvents(() => true, add, { debounce: 0 });
      atoll.rendered();
    },
  });
})();
