// The Consul side of the UI: the datacenter overview, services, nodes and the KV store.
// Every page stays live through blocking queries (atoll.watch).
(function () {
  'use strict';
  const { h, link, badge, table, enc } = atoll;

  // ---- shared pieces ---------------------------------------------------------------------

  function heading(text, sub) {
    return h('h1', {}, text, sub ? h('span', { class: 'sub', text: sub }) : null);
  }

  function crumbs(...parts) {
    const nav = h('div', { class: 'crumbs' });
    parts.forEach((part, i) => {
      if (i > 0) nav.appendChild(document.createTextNode(' / '));
      nav.appendChild(typeof part === 'string' ? document.createTextNode(part) : part);
    });
    return nav;
  }

  function tags(list) {
    return h('span', {}, (list || []).map((tag) => h('span', { class: 'tag', text: tag })));
  }

  function mono(text) {
    return h('span', { class: 'mono', text });
  }

  // Passing/warning/critical counts as badges; zero counts are left out.
  function healthCounts(passing, warning, critical) {
    const span = h('span', { class: 'counts' });
    if (passing) span.appendChild(badge('passing', passing + ' passing'));
    if (warning) span.appendChild(badge('warning', warning + ' warning'));
    if (critical) span.appendChild(badge('critical', critical + ' critical'));
    if (!passing && !warning && !critical) span.appendChild(h('span', { class: 'muted', text: 'no checks' }));
    return span;
  }

  // The worst status of a set of checks, as Consul aggregates them.
  function worst(checks) {
    let status = 'passing';
    for (const check of checks || []) {
      if (check.Status === 'critical') return 'critical';
      if (check.Status === 'warning') status = 'warning';
    }
    return status;
  }

  function countStatuses(checks) {
    const counts = { passing: 0, warning: 0, critical: 0 };
    for (const check of checks || []) {
      if (counts[check.Status] !== undefined) counts[check.Status] += 1;
    }
    return counts;
  }

  function usage(used, total, text) {
    const share = total > 0 ? Math.min(1, used / total) : 0;
    const bar = h('div', { class: 'bar' + (share >= 1 ? ' full' : share >= 0.8 ? ' high' : '') },
      h('span', { style: 'width:' + (share * 100).toFixed(1) + '%' }));
    return h('div', { class: 'usage' }, h('span', { class: 'nowrap', text }), bar);
  }

  function card(label, value, detail) {
    return h('div', { class: 'card' },
      h('div', { class: 'label', text: label }),
      h('div', { class: 'value' }, value),
      detail ? h('div', { class: 'detail' }, detail) : null);
  }

  // The Marathon app a service instance was registered for, from the meta atoll sets.
  function appLink(service) {
    const meta = (service && service.Meta) || {};
    if (!meta.marathon_app_id) return null;
    const id = meta.marathon_app_id.replace(/^\/+/, '');
    return h('span', {}, link('/apps/' + enc(id), '/' + id),
      meta.marathon_task_id ? h('div', { class: 'mono muted', title: 'task', text: meta.marathon_task_id }) : null);
  }

  function computeColumns() {
    const fmt = atoll.fmt;
    return [
      { title: 'Node', value: (c) => link('/nodes/' + enc(c.Node), c.Node), sort: (c) => c.Node },
      {
        title: 'CPU used / total',
        value: (c) => usage(c.CpusUsed, c.Cpus, fmt.number(c.CpusUsed) + ' / ' + fmt.number(c.Cpus)),
        sort: (c) => c.CpusUsed / (c.Cpus || 1),
      },
      { title: 'CPU free', value: (c) => fmt.number(Math.max(0, c.Cpus - c.CpusUsed)), sort: (c) => c.Cpus - c.CpusUsed },
      {
        title: 'Memory used / total',
        value: (c) => usage(c.MemUsed, c.Mem, fmt.mem(c.MemUsed) + ' / ' + fmt.mem(c.Mem)),
        sort: (c) => c.MemUsed / (c.Mem || 1),
      },
      { title: 'Memory free', value: (c) => fmt.mem(Math.max(0, c.Mem - c.MemUsed)), sort: (c) => c.Mem - c.MemUsed },
      {
        title: 'Ports used / free',
        value: (c) => usage(c.PortsUsed, c.PortsTotal, c.PortsUsed + ' / ' + c.PortsFree + ' free'),
        sort: (c) => c.PortsFree,
      },
      { title: 'Port range', value: (c) => mono(c.PortRange[0] + '–' + c.PortRange[1]) },
      { title: 'Tasks', value: (c) => String(c.Tasks), sort: (c) => c.Tasks },
      { title: 'Drivers', value: (c) => tags(c.Drivers) },
    ];
  }

  // ---- overview --------------------------------------------------------------------------

  atoll.page('/', {
    name: 'overview',
    title: 'Overview',
    nav: 'Overview',
    render(view) {
      const cards = h('div', { class: 'cards' });
      const serversBox = h('div', {});
      const problemsBox = h('div', {});
      const computeTable = table(computeColumns(), [], {
        key: (c) => c.Node,
        empty: 'No compute nodes: no node offers to run tasks.',
      });
      const datacentersBox = h('div', {});
      view.append(
        heading('Overview'),
        cards,
        h('h2', { text: 'Servers' }), serversBox,
        h('h2', { text: 'Compute nodes' }), computeTable,
        h('h2', { text: 'Checks not passing' }), problemsBox,
        h('h2', { text: 'Datacenters' }), datacentersBox);

      const state = { checks: null, services: null, nodes: null, compute: null };

      function drawCards() {
        cards.replaceChildren();
        if (state.services) {
          const critical = state.services.filter((s) => s.ChecksCritical > 0).length;
          const warning = state.services.filter((s) => !s.ChecksCritical && s.ChecksWarning > 0).length;
          cards.appendChild(card('Services', link('/services', String(state.services.length)), [
            critical ? badge('critical', critical + ' critical') : null,
            warning ? badge('warning', warning + ' warning') : null,
            critical || warning ? null : badge('passing', 'all passing'),
          ]));
        }
        if (state.compute) {
          const sum = (f) => state.compute.reduce((total, c) => total + f(c), 0);
          const fmt = atoll.fmt;
          cards.appendChild(card('Compute nodes', String(state.compute.length), [
            h('span', { text: fmt.number(sum((c) => c.Cpus - c.CpusUsed)) + ' of ' + fmt.number(sum((c) => c.Cpus)) + ' cpus free' }),
            h('span', { text: fmt.mem(sum((c) => c.Mem - c.MemUsed)) + ' of ' + fmt.mem(sum((c) => c.Mem)) + ' free' }),
          ]));
        }
        if (state.nodes) {
          cards.appendChild(card('Nodes', link('/nodes', String(state.nodes.length))));
        }
        if (state.checks) {
          const counts = countStatuses(state.checks);
          cards.appendChild(card('Checks', String(state.checks.length),
            healthCounts(counts.passing, counts.warning, counts.critical)));
        }
      }

      const problemTable = table([
        { title: 'Status', value: (c) => badge(c.Status), sort: (c) => ({ critical: 0, warning: 1 })[c.Status] },
        { title: 'Check', value: (c) => c.Name },
        { title: 'Node', value: (c) => link('/nodes/' + enc(c.Node), c.Node), sort: (c) => c.Node },
        {
          title: 'Service',
          value: (c) => (c.ServiceName ? link('/services/' + enc(c.ServiceName), c.ServiceName) : ''),
          sort: (c) => c.ServiceName,
        },
        { title: 'Output', value: (c) => h('span', { class: 'mono', text: c.Output }) },
      ], [], { key: (c) => c.Node + '/' + c.CheckID, empty: 'Every check is passing.' });
      problemsBox.appendChild(problemTable);

      async function drawServers() {
        try {
          const [leader, peers, members] = await Promise.all([
            atoll.api('GET', '/v1/status/leader'),
            atoll.api('GET', '/v1/status/peers'),
            atoll.api('GET', '/v1/agent/members'),
          ]);
          const voters = new Set(peers.json || []);
          const servers = (members.json || []).filter((m) => m.Tags && m.Tags.role === 'consul');
          const rows = servers.map((m) => {
            const raft = m.Addr + ':' + (m.Tags.port || '');
            return { member: m, raft, leader: raft === leader.json, voter: voters.has(raft) };
          });
          const serversTable = table([
            { title: 'Server', value: (r) => link('/nodes/' + enc(r.member.Name), r.member.Name), sort: (r) => r.member.Name },
            { title: 'Raft address', value: (r) => mono(r.raft) },
            {
              title: 'Role',
              value: (r) => (r.leader ? badge('leader', 'leader') : badge(r.voter ? 'neutral' : 'warning', r.voter ? 'follower' : 'not a voter')),
              sort: (r) => (r.leader ? 0 : 1),
            },
            { title: 'Member', value: (r) => badge(r.member.Status === 1 ? 'alive' : 'failed', memberStatus(r.member.Status)) },
            { title: 'Version', value: (r) => r.member.Tags.build || '' },
          ], rows, { key: (r) => r.member.Name, empty: 'No servers known.' });
          const leaderText = leader.json
            ? h('p', { class: 'meta' }, 'Leader ', mono(leader.json), ', ' + voters.size + ' voter' + (voters.size === 1 ? '' : 's'))
            : h('div', { class: 'error', text: 'No leader: the servers have no quorum.' });
          serversBox.replaceChildren(leaderText, serversTable);
        } catch (error) {
          serversBox.replaceChildren();
          atoll.error(serversBox, error);
        }
      }

      async function drawDatacenters() {
        try {
          const answer = await atoll.api('GET', '/v1/catalog/datacenters');
          const local = atoll.datacenter;
          datacentersBox.replaceChildren(table([
            { title: 'Datacenter', value: (dc) => mono(dc) },
            { title: '', value: (dc) => (dc === local ? badge('neutral', 'this one') : '') },
          ], answer.json || [], { key: (dc) => dc, empty: 'No datacenters.' }));
        } catch (error) {
          datacentersBox.replaceChildren();
          atoll.error(datacentersBox, error);
        }
      }

      atoll.watch('/v1/health/state/any', (checks) => {
        state.checks = checks || [];
        problemTable.update(state.checks.filter((c) => c.Status !== 'passing'));
        drawCards();
        // Membership and leadership show in the nodes' liveness checks: the server table is
        // read again whenever the checks change.
        drawServers();
      });
      atoll.watch('/v1/internal/ui/services', (services) => {
        state.services = services || [];
        drawCards();
      });
      atoll.watch('/v1/catalog/nodes', (nodes) => {
        state.nodes = nodes || [];
        drawCards();
        drawDatacenters();
      });
      atoll.watch('/v1/internal/ui/compute-nodes', (compute) => {
        state.compute = compute || [];
        computeTable.update(state.compute);
        drawCards();
      });
    },
  });

  function memberStatus(status) {
    return ['none', 'alive', 'leaving', 'left', 'failed'][status] || String(status);
  }

  // ---- services --------------------------------------------------------------------------

  atoll.page('/services', {
    name: 'services',
    title: 'Services',
    nav: 'Services',
    render(view) {
      const list = table([
        { title: 'Service', value: (s) => link('/services/' + enc(s.Name), s.Name), sort: (s) => s.Name },
        {
          title: 'Health',
          value: (s) => healthCounts(s.ChecksPassing, s.ChecksWarning, s.ChecksCritical),
          sort: (s) => -(s.ChecksCritical * 1e6 + s.ChecksWarning * 1e3),
        },
        { title: 'Instances', value: (s) => String(s.InstanceCount), sort: (s) => s.InstanceCount },
        { title: 'Nodes', value: (s) => String(s.Nodes.length), sort: (s) => s.Nodes.length },
        { title: 'Tags', value: (s) => tags(s.Tags), sort: (s) => s.Tags.join(' ') },
      ], [], {
        filter: true,
        placeholder: 'Filter by name or tag',
        key: (s) => s.Name,
        empty: 'No services registered.',
      });
      view.append(heading('Services'), list);
      atoll.watch('/v1/internal/ui/services', (services) => list.update(services || []));
    },
  });

  atoll.page('/services/:name', {
    name: 'service',
    title: (params) => params.name,
    render(view, params) {
      const name = params.name;
      const summary = h('p', { class: 'meta' });
      const instances = table([
        { title: 'Instance', value: (e) => mono(e.Service.ID), sort: (e) => e.Service.ID },
        { title: 'Node', value: (e) => link('/nodes/' + enc(e.Node.Node), e.Node.Node), sort: (e) => e.Node.Node },
        { title: 'Address', value: (e) => mono(instanceAddress(e)) },
        { title: 'Health', value: (e) => badge(worst(e.Checks)), sort: (e) => worst(e.Checks) },
        { title: 'Tags', value: (e) => tags(e.Service.Tags) },
        { title: 'App', value: (e) => appLink(e.Service) || '' },
        { title: 'Checks', value: (e) => checkList(e.Checks) },
      ], [], {
        filter: true,
        placeholder: 'Filter instances',
        key: (e) => e.Node.Node + '/' + e.Service.ID,
        empty: 'No instance of ' + name + ' is registered.',
      });
      view.append(crumbs(link('/services', 'Services'), name), heading(name), summary, instances);
      atoll.watch('/v1/health/service/' + encodeURIComponent(name), (entries) => {
        const list = entries || [];
        const counts = { passing: 0, warning: 0, critical: 0 };
        for (const entry of list) counts[worst(entry.Checks)] += 1;
        const nodes = new Set(list.map((e) => e.Node.Node));
        summary.replaceChildren(
          list.length + ' instance' + (list.length === 1 ? '' : 's') + ' on ' + nodes.size +
          ' node' + (nodes.size === 1 ? '' : 's') + ' ',
          healthCounts(counts.passing, counts.warning, counts.critical));
        instances.update(list);
      });
    },
  });

  function instanceAddress(entry) {
    const address = entry.Service.Address || entry.Node.Address;
    return entry.Service.Port ? address + ':' + entry.Service.Port : address;
  }

  function checkList(checks) {
    const list = h('div', { class: 'checks' });
    for (const check of checks || []) {
      list.appendChild(h('div', { class: 'check', 'data-check': check.CheckID },
        badge(check.Status), ' ', h('span', { text: check.Name }),
        check.ServiceID ? null : h('span', { class: 'muted', text: ' (node)' }),
        check.Output ? h('pre', { class: 'output', text: check.Output }) : null));
    }
    return list;
  }

  // ---- nodes -----------------------------------------------------------------------------

  atoll.page('/nodes', {
    name: 'nodes',
    title: 'Nodes',
    nav: 'Nodes',
    render(view) {
      const state = { nodes: [], checks: [], compute: new Map() };
      const list = table([
        { title: 'Node', value: (n) => link('/nodes/' + enc(n.Node), n.Node), sort: (n) => n.Node },
        { title: 'Address', value: (n) => mono(n.Address) },
        {
          // The node's own checks (liveness first); its services' checks are counted beside.
          title: 'Node health',
          value: (n) => badge(worst(checksOf(n.Node).filter((c) => !c.ServiceID))),
          sort: (n) => worst(checksOf(n.Node).filter((c) => !c.ServiceID)),
        },
        {
          title: 'All checks',
          value: (n) => {
            const counts = countStatuses(checksOf(n.Node));
            return healthCounts(counts.passing, counts.warning, counts.critical);
          },
        },
        {
          title: 'Compute',
          value: (n) => {
            const c = state.compute.get(n.Node);
            if (!c) return h('span', { class: 'muted', text: '—' });
            return atoll.fmt.number(c.Cpus - c.CpusUsed) + ' cpus, ' + atoll.fmt.mem(c.Mem - c.MemUsed) + ' free';
          },
        },
        { title: 'Meta', value: (n) => tags(Object.entries(n.Meta || {}).map(([k, v]) => k + '=' + v)) },
      ], [], { filter: true, placeholder: 'Filter nodes', key: (n) => n.Node, empty: 'No nodes.' });
      view.append(heading('Nodes'), list);

      function checksOf(node) {
        return state.checks.filter((c) => c.Node === node);
      }
      const redraw = () => list.update(state.nodes);
      atoll.watch('/v1/catalog/nodes', (nodes) => {
        state.nodes = nodes || [];
        redraw();
      });
      atoll.watch('/v1/health/state/any', (checks) => {
        state.checks = checks || [];
        redraw();
      });
      atoll.watch('/v1/internal/ui/compute-nodes', (compute) => {
        state.compute = new Map((compute || []).map((c) => [c.Node, c]));
        redraw();
      });
    },
  });

  atoll.page('/nodes/:name', {
    name: 'node',
    title: (params) => params.name,
    render(view, params) {
      const name = params.name;
      const facts = h('div', { class: 'panel' });
      const computeBox = h('div', {});
      const services = table([
        { title: 'Service', value: (s) => link('/services/' + enc(s.Service), s.Service), sort: (s) => s.Service },
        { title: 'Instance', value: (s) => mono(s.ID) },
        { title: 'Port', value: (s) => String(s.Port || ''), sort: (s) => s.Port },
        { title: 'Tags', value: (s) => tags(s.Tags) },
        { title: 'App', value: (s) => appLink(s) || '' },
      ], [], { filter: true, placeholder: 'Filter services', key: (s) => s.ID, empty: 'No services on this node.' });
      const checks = table([
        { title: 'Status', value: (c) => badge(c.Status), sort: (c) => c.Status },
        { title: 'Check', value: (c) => c.Name },
        {
          title: 'Service',
          value: (c) => (c.ServiceName ? link('/services/' + enc(c.ServiceName), c.ServiceName) : h('span', { class: 'muted', text: 'node' })),
        },
        { title: 'Output', value: (c) => (c.Output ? h('pre', { class: 'output', text: c.Output }) : '') },
      ], [], { key: (c) => c.CheckID, empty: 'No checks on this node.' });
      const title = heading(name);
      view.append(crumbs(link('/nodes', 'Nodes'), name), title, facts,
        h('h2', { text: 'Compute' }), computeBox,
        h('h2', { text: 'Services' }), services,
        h('h2', { text: 'Checks' }), checks);

      atoll.watch('/v1/catalog/node/' + encodeURIComponent(name), (answer) => {
        if (!answer || !answer.Node) {
          facts.replaceChildren(h('div', { class: 'error', text: 'No node named ' + name + ' is in the catalog.' }));
          services.update([]);
          return;
        }
        const node = answer.Node;
        const meta = Object.entries(node.Meta || {});
        facts.replaceChildren(h('dl', { class: 'facts' },
          h('dt', { text: 'Address' }), h('dd', {}, mono(node.Address)),
          h('dt', { text: 'Datacenter' }), h('dd', { text: node.Datacenter || atoll.datacenter || '' }),
          node.ID ? [h('dt', { text: 'ID' }), h('dd', {}, mono(node.ID))] : null,
          h('dt', { text: 'Meta' }), h('dd', {}, meta.length ? tags(meta.map(([k, v]) => k + '=' + v)) : h('span', { class: 'muted', text: 'none' }))));
        services.update(Object.values(answer.Services || {}));
      }, { allow404: true });
      const health = h('span', { class: 'sub' });
      title.appendChild(health);
      atoll.watch('/v1/health/node/' + encodeURIComponent(name), (list) => {
        const own = (list || []).filter((c) => !c.ServiceID);
        health.replaceChildren(own.length ? badge(worst(own)) : '');
        checks.update(list || []);
      });
      const computeTable = table(computeColumns().slice(1), [], {
        key: (c) => c.Node,
        empty: 'This node does not run tasks.',
      });
      computeBox.appendChild(computeTable);
      atoll.watch('/v1/internal/ui/compute-nodes', (compute) => {
        computeTable.update((compute || []).filter((c) => c.Node === name));
      });
    },
  });

  // ---- key/value -------------------------------------------------------------------------

  function decodeValue(base64) {
    if (!base64) return '';
    const binary = atob(base64);
    const bytes = Uint8Array.from(binary, (ch) => ch.charCodeAt(0));
    return new TextDecoder('utf-8', { fatal: false }).decode(bytes);
  }

  function kvPath(key) {
    return '/v1/kv/' + enc(key);
  }

  // Breadcrumbs of a key: every folder above it links to its listing.
  function kvCrumbs(key) {
    const parts = key.split('/');
    const trail = [link('/kv/', 'Key/Value')];
    let prefix = '';
    parts.forEach((part, i) => {
      if (part === '' && i === parts.length - 1) return;
      const last = i === parts.length - 1;
      prefix += part + (last ? '' : '/');
      trail.push(last ? part : link('/kv/' + enc(prefix), part));
    });
    return crumbs(...trail);
  }

  atoll.page('/kv/*key', {
    name: 'kv',
    title: (params) => 'Key/Value ' + (params.key || ''),
    nav: 'Key/Value',
    navPath: '/kv/',
    render(view, params) {
      const key = params.key || '';
      if (key === '' || key.endsWith('/')) renderFolder(view, key);
      else renderKey(view, key);
    },
  });

  function renderFolder(view, prefix) {
    view.dataset.kind = 'folder';
    const entries = table([
      {
        title: 'Key',
        value: (k) => {
          const label = k.slice(prefix.length);
          return link('/kv/' + enc(k), label, { class: k.endsWith('/') ? 'folder' : 'key' });
        },
        sort: (k) => (k.endsWith('/') ? '0' : '1') + k,
      },
      { title: 'Kind', value: (k) => (k.endsWith('/') ? 'folder' : 'key') },
    ], [], {
      filter: true,
      placeholder: 'Filter keys',
      key: (k) => k,
      empty: prefix ? 'This folder is empty.' : 'The store is empty.',
    });

    const createBox = h('div', { class: 'panel', hidden: true });
    const form = atoll.form([
      { name: 'name', label: 'Key (under ' + (prefix || 'the root') + '; end with / for a folder)', required: true },
      { name: 'value', label: 'Value', type: 'textarea', rows: 6 },
    ], async (values) => {
      const name = values.name.trim().replace(/^\/+/, '');
      if (!name) throw new Error('The key needs a name.');
      const full = prefix + name;
      // cas=0 writes only a key that does not exist yet: creating never overwrites.
      const answer = await atoll.api('PUT', kvPath(full) + '?cas=0', full.endsWith('/') ? '' : values.value);
      if (answer.json !== true) throw new Error('A key named ' + full + ' already exists.');
      atoll.go('/kv/' + enc(full));
    }, { name: 'kv-create', submit: 'Create', action: 'create-key' });
    createBox.appendChild(form);

    const actions = h('div', { class: 'actions' },
      h('button', {
        class: 'button primary',
        'data-action': 'new-key',
        text: 'Create',
        onclick: () => {
          createBox.hidden = !createBox.hidden;
          if (!createBox.hidden) form.inputs.name.focus();
        },
      }),
      prefix ? h('button', {
        class: 'button danger',
        'data-action': 'delete-folder',
        text: 'Delete folder',
        onclick: async () => {
          const sure = await atoll.confirmDialog('Delete the folder ' + prefix + ' and every key under it?', { confirm: 'Delete' });
          if (!sure) return;
          try {
            await atoll.api('DELETE', kvPath(prefix) + '?recurse');
            atoll.go('/kv/' + enc(parentOf(prefix)));
          } catch (error) {
            atoll.error(view, error);
          }
        },
      }) : null);

    view.append(kvCrumbs(prefix), heading(prefix ? prefix : 'Key/Value'), actions, createBox, entries);
    atoll.watch(kvPath(prefix) + '?keys&separator=/', (keys) => {
      entries.update((keys || []).filter((k) => k !== prefix));
    }, { allow404: true });
  }

  function parentOf(key) {
    const trimmed = key.endsWith('/') ? key.slice(0, -1) : key;
    const cut = trimmed.lastIndexOf('/');
    return cut < 0 ? '' : trimmed.slice(0, cut + 1);
  }

  function renderKey(view, key) {
    view.dataset.kind = 'key';
    const valueBox = h('pre', { class: 'kv-value', 'data-value': key });
    const facts = h('dl', { class: 'facts' });
    const missing = h('div', { class: 'notice', hidden: true, text: 'The key ' + key + ' does not exist (or was deleted).' });
    const editBox = h('div', { class: 'panel', hidden: true });
    let current = null;
    let editing = null;

    function openEditor() {
      if (!current) return;
      // The index the edit starts from: saving with ?cas= fails if anyone wrote since.
      editing = { index: current.ModifyIndex };
      const form = atoll.form([
        { name: 'value', label: 'Value', type: 'textarea', rows: 10, value: decodeValue(current.Value) },
      ], async (values) => {
        const answer = await atoll.api('PUT', kvPath(key) + '?cas=' + editing.index, values.value);
        if (answer.json !== true) {
          throw new Error('Not saved: the key was changed by someone else since you started ' +
            'editing (it is now at index ' + (current ? current.ModifyIndex : '?') + '). ' +
            'Copy your text, reopen the editor to start from the current value, and save again.');
        }
        editBox.hidden = true;
        editing = null;
      }, {
        name: 'kv-edit',
        submit: 'Save',
        action: 'save-key',
        extra: h('button', {
          type: 'button',
          class: 'button',
          'data-action': 'cancel-edit',
          text: 'Cancel',
          onclick: () => {
            editBox.hidden = true;
            editing = null;
          },
        }),
      });
      editBox.replaceChildren(h('h3', { text: 'Edit ' + key }), form);
      editBox.hidden = false;
      form.inputs.value.focus();
    }

    const actions = h('div', { class: 'actions' },
      h('button', { class: 'button primary', 'data-action': 'edit-key', text: 'Edit', onclick: openEditor }),
      h('button', {
        class: 'button danger',
        'data-action': 'delete-key',
        text: 'Delete',
        onclick: async () => {
          const sure = await atoll.confirmDialog('Delete the key ' + key + '?', { confirm: 'Delete' });
          if (!sure) return;
          try {
            await atoll.api('DELETE', kvPath(key));
            atoll.go('/kv/' + enc(parentOf(key)));
          } catch (error) {
            atoll.error(view, error);
          }
        },
      }));

    view.append(kvCrumbs(key), heading(key.slice(key.lastIndexOf('/') + 1), key), missing, actions,
      editBox, h('div', { class: 'panel' }, facts), h('h2', { text: 'Value' }), valueBox);

    atoll.watch(kvPath(key), (entries) => {
      current = entries && entries[0] ? entries[0] : null;
      missing.hidden = current !== null;
      actions.hidden = current === null;
      if (!current) {
        valueBox.textContent = '';
        facts.replaceChildren();
        return;
      }
      valueBox.textContent = decodeValue(current.Value);
      facts.replaceChildren(
        h('dt', { text: 'Modify index' }), h('dd', {}, mono(String(current.ModifyIndex))),
        h('dt', { text: 'Create index' }), h('dd', {}, mono(String(current.CreateIndex))),
        h('dt', { text: 'Flags' }), h('dd', {}, mono(String(current.Flags || 0))),
        h('dt', { text: 'Session' }), h('dd', {}, current.Session ? mono(current.Session) : h('span', { class: 'muted', text: 'none' })));
    }, { allow404: true });
  }
})();
