// PowerAutomation operator dashboard. Plain JavaScript, no framework, no build step.
// Everything comes from the host's API with the signed-in key (X-API-Key header); every
// API-provided text reaches the page through textContent, never as markup.
'use strict';

(() => {
  const KEY_STORAGE = 'powerautomation.apiKey';
  const PLUGIN = 'deployment_mcp';
  const API = '/api/deployment';
  const TERMINAL = new Set(['completed', 'failed', 'cancelled', 'interrupted', 'rolled_back']);
  const GOOD = new Set(['completed', 'succeeded', 'active']);
  const BAD = new Set(['failed', 'timed_out', 'interrupted', 'missing', 'incompatible', 'rollback_failed']);
  // The state machines, in order: answers and events can arrive out of order (a snapshot
  // fetched before an event may land after it), and the page never shows a step back.
  const PHASES = ['pending', 'ec2_deploying', 'ec2_completed', 'local_triggering', 'local_deploying',
    'local_completed', 'verifying', 'awaiting_approval', 'rolling_back',
    'completed', 'failed', 'cancelled', 'interrupted', 'rolled_back'];
  const TARGET_STATES = ['pending', 'triggering', 'running', 'succeeded', 'failed', 'timed_out', 'cancelled',
    'skipped', 'rolled_back', 'rollback_failed'];
  const FIRST_END = new Map([[PHASES, PHASES.indexOf('completed')], [TARGET_STATES, TARGET_STATES.indexOf('succeeded')]]);
  const LOG_TAIL = 200;
  const HISTORY_PAGE = 10;

  const state = {
    key: null,
    role: null, // 'admin' | 'developer' | 'user' | null (unknown)
    canReadDetails: true, // false once a developer endpoint answered 403
    unavailable: null, // the reason the deployment plugin cannot serve, or null
    plugins: [],
    environments: [],
    calendar: null, // the last GET /calendar answer
    calendarSeq: 0,
    // The notifications card (admins): the subscription whose deliveries are shown, and the
    // newest reads (older answers that land later are dropped).
    notifications: { selected: null, seq: 0, deliveriesSeq: 0 },
    active: null, // the deployment shown in the active panel
    detailSeq: 0,
    // Phase events applied to the deployment on screen, so a read that was on its way when one
    // came does not take the panel back to an older phase.
    phaseEvents: 0,
    detailApplied: 0,
    history: { cursors: [null], index: 0, next: null },
    logDialogId: null,
    logDialogSeen: new Set(),
    events: { controller: null, lastId: null, retry: 0, timer: null, connected: false, connectedBefore: false },
    timers: {},
    generation: 0, // bumped at sign-out so late answers of an old session are dropped
  };

  const $ = (id) => document.getElementById(id);

  // ---------------------------------------------------------------- DOM helpers

  /** Creates an element; children that are strings become text nodes (never markup). */
  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    if (props) {
      for (const [name, value] of Object.entries(props)) {
        if (value === undefined || value === null || value === false) continue;
        if (name === 'class') node.className = value;
        else if (name === 'text') node.textContent = String(value);
        else if (name.startsWith('on') && typeof value === 'function') node.addEventListener(name.slice(2), value);
        else if (name in node && typeof value !== 'string') node[name] = value;
        else node.setAttribute(name, String(value));
      }
    }
    for (const child of children.flat()) {
      if (child === undefined || child === null || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
    return node;
  }

  function show(node, visible) {
    node.hidden = !visible;
  }

  function message(node, text, kind) {
    node.textContent = text || '';
    node.classList.toggle('error', kind === 'error');
    node.classList.toggle('ok', kind === 'ok');
    show(node, Boolean(text));
  }

  function statusClass(status) {
    if (GOOD.has(status)) return 'good';
    if (BAD.has(status)) return 'bad';
    if (['cancelled', 'disabled', 'skipped', 'rolled_back'].includes(status)) return 'neutral';
    return 'busy';
  }

  function pill(text, status, extra) {
    return el('span', { class: `pill ${statusClass(status || text)} ${extra || ''}`.trim(), text: text });
  }

  function formatTime(text) {
    if (!text) return '–';
    const date = new Date(text);
    if (Number.isNaN(date.getTime())) return String(text);
    const pad = (n) => String(n).padStart(2, '0');
    const time = `${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}`;
    const now = new Date();
    if (date.toDateString() === now.toDateString()) return time;
    return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())} ${time}`;
  }

  function timeNode(text) {
    return el('time', { datetime: text || undefined, title: text || undefined, text: formatTime(text) });
  }

  function formatDuration(ms) {
    if (ms === undefined || ms === null) return '–';
    if (ms < 1000) return `${ms} ms`;
    const seconds = ms / 1000;
    if (seconds < 60) return `${seconds.toFixed(1)} s`;
    const whole = Math.round(seconds);
    return `${Math.floor(whole / 60)} m ${String(whole % 60).padStart(2, '0')} s`;
  }

  /** How long a deployment started at `created` has run, e.g. "12.3 s so far". */
  function runningFor(created) {
    const started = Date.parse(created);
    return Number.isFinite(started) ? `${formatDuration(Math.max(0, Date.now() - started))} so far` : 'running';
  }

  // Running deployments' durations tick on between refreshes of the table.
  setInterval(() => {
    for (const cell of document.querySelectorAll('#history-rows td[data-running-since]')) {
      cell.textContent = runningFor(cell.dataset.runningSince);
    }
  }, 1000);

  function shortId(id) {
    return typeof id === 'string' && id.length > 20 ? `${id.slice(0, 18)}…` : id || '';
  }

  /** The further along of two states of `order` (the first ending state and those after it
   * rank alike: the newest word on how it ended wins). Unknown states are taken as given. */
  function later(order, current, next) {
    if (!next) return current;
    const end = FIRST_END.get(order);
    const rank = (s) => Math.min(order.indexOf(s), end);
    if (order.indexOf(next) < 0 || order.indexOf(current) < 0) return next;
    // A rollout moves back and forth between phases (a batch deploys, verifies, waits at its
    // gate, deploys again): until it ends, the newest word wins.
    if (order === PHASES && rank(current) < end && rank(next) < end) return next;
    return rank(next) >= rank(current) ? next : current;
  }

  function debounce(name, delay, fn) {
    clearTimeout(state.timers[name]);
    state.timers[name] = setTimeout(fn, delay);
  }

  // ---------------------------------------------------------------- API

  /** Calls the API with the session's key. Resolves to {status, ok, body}; never throws. */
  async function api(method, path, body) {
    const generation = state.generation;
    // The audit log records which door a call came through.
    const headers = { Accept: 'application/json', 'X-API-Key': state.key || '', 'X-PowerAutomation-Via': 'dashboard' };
    const init = { method, headers, cache: 'no-store', credentials: 'omit' };
    if (body !== undefined) {
      headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(path, init);
    } catch (error) {
      return { status: 0, ok: false, body: { error: 'network', message: `The host did not answer (${error.message}).` }, stale: generation !== state.generation };
    }
    let parsed = null;
    try {
      parsed = await response.json();
    } catch (_) {
      parsed = null;
    }
    const result = { status: response.status, ok: response.ok, body: parsed, stale: generation !== state.generation };
    if (result.stale) return result;
    if (response.status === 401 && state.key) {
      signOut(errorText(result, 'The API key was refused.'));
    } else if (response.status === 503 && path.startsWith(API) && parsed && parsed.error === 'plugin_unavailable') {
      setUnavailable(parsed.message || 'the deployment plugin is not active');
    }
    return result;
  }

  function errorText(result, fallback) {
    return (result.body && result.body.message) || fallback || `The host answered ${result.status}.`;
  }

  // ---------------------------------------------------------------- session

  function signOut(reason) {
    state.generation += 1;
    state.key = null;
    state.role = null;
    state.canReadDetails = true;
    state.active = null;
    state.unavailable = null;
    state.history = { cursors: [null], index: 0, next: null };
    try {
      sessionStorage.removeItem(KEY_STORAGE);
    } catch (_) { /* storage may be disabled */ }
    stopEvents();
    for (const timer of Object.values(state.timers)) clearTimeout(timer);
    state.timers = {};
    const dialog = $('log-dialog');
    if (dialog.open) dialog.close();
    $('filter-status').value = '';
    $('filter-environment').value = '';
    for (const id of ['trigger-version', 'trigger-selector', 'trigger-override']) $(id).value = '';
    clear($('trigger-environments'));
    for (const id of ['trigger-message', 'trigger-window', 'cancel-message', 'plugin-message', 'history-message', 'calendar-message',
      'subscriptions-message', 'deliveries-message', 'redeliver-message']) message($(id), '');
    state.notifications.selected = null;
    clear($('subscriptions-list'));
    clear($('deliveries-list'));
    show($('deliveries'), false);
    state.calendar = null;
    state.calendarSeq += 1;
    clear($('calendar-strip'));
    clear($('calendar-notes'));
    $('calendar-range').textContent = '';
    delete $('trigger-window').dataset.window;
    delete $('trigger-message').dataset.deploymentId;
    showHistoryTable(true);
    show($('app'), false);
    show($('session'), false);
    show($('sign-in'), true);
    $('api-key').value = '';
    message($('sign-in-error'), reason || '', 'error');
    $('api-key').focus();
  }

  async function signIn(key) {
    state.generation += 1;
    state.key = key;
    const result = await api('GET', '/api/plugins');
    if (!result.ok) {
      state.key = null;
      message($('sign-in-error'), errorText(result, 'The key could not be checked.'), 'error');
      return false;
    }
    try {
      sessionStorage.setItem(KEY_STORAGE, key);
    } catch (_) { /* the key then lasts for this page only */ }
    message($('sign-in-error'), '');
    show($('sign-in'), false);
    show($('app'), true);
    show($('session'), true);
    applyPlugins(result.body);
    await probeRole();
    connectEvents();
    if (!state.unavailable) loadDeploymentViews();
    return true;
  }

  /** Asks the host which role the key has, to show only the actions it may take. */
  async function probeRole() {
    const result = await api('GET', '/api/auth/whoami');
    if (result.stale) return;
    const role = result.status === 200 && result.body ? result.body.role : null;
    if (role === 'user') state.canReadDetails = false;
    setRole(role === 'admin' || role === 'developer' || role === 'user' ? role : null);
  }

  function setRole(role) {
    state.role = role;
    if (role === 'developer' && !state.canReadDetails) state.role = 'user';
    $('role-badge').textContent = state.role || 'role unknown';
    const admin = state.role === 'admin' || state.role === null;
    document.body.classList.toggle('not-admin', !admin);
    renderActive();
    renderPlugins();
    loadAudit();
  }

  /** A developer endpoint answered 403: the key is a `user`'s. */
  function lostDetails() {
    if (!state.canReadDetails) return;
    state.canReadDetails = false;
    if (state.role !== 'admin') setRole('user');
  }

  // ---------------------------------------------------------------- plugin state

  function setUnavailable(reason) {
    const changed = state.unavailable !== reason;
    state.unavailable = reason;
    $('plugin-banner-reason').textContent = reason;
    show($('plugin-banner'), true);
    document.body.classList.add('plugin-down');
    if (changed) debounce('plugins', 200, loadPlugins);
  }

  function setAvailable() {
    const was = state.unavailable;
    state.unavailable = null;
    show($('plugin-banner'), false);
    document.body.classList.remove('plugin-down');
    if (was !== null) {
      loadDeploymentViews();
      reconnectSoon(0);
    }
  }

  async function loadPlugins() {
    const result = await api('GET', '/api/plugins');
    if (result.stale || !result.ok) return;
    applyPlugins(result.body);
  }

  function applyPlugins(body) {
    state.plugins = (body && Array.isArray(body.plugins)) ? body.plugins : [];
    const plugin = state.plugins.find((p) => p.name === PLUGIN);
    if (!plugin) {
      setUnavailable(`plugin ${PLUGIN} is not configured on this host`);
    } else if (plugin.state !== 'active') {
      // The same words as the host's 503 answer, so both sources agree.
      setUnavailable(`plugin ${plugin.name} is ${plugin.state}: ${plugin.last_error || 'it is not loaded'}`);
    } else {
      setAvailable();
    }
    renderPlugins();
  }

  function renderPlugins() {
    const list = clear($('plugin-list'));
    if (!state.plugins.length) {
      list.append(el('p', { class: 'muted', text: 'No plugins are configured.' }));
      return;
    }
    for (const plugin of state.plugins) {
      const sha = plugin.sha256 || '';
      const facts = el('dl', { class: 'facts' },
        el('dt', { text: 'Version' }), el('dd', { text: plugin.version || '–' }),
        el('dt', { text: 'ABI' }), el('dd', { text: plugin.abi || '–' }),
        el('dt', { text: 'SHA-256' }), el('dd', null, sha ? el('code', { class: 'sha', title: sha, text: `${sha.slice(0, 12)}…` }) : '–'),
        el('dt', { text: 'Loaded' }), el('dd', null, plugin.loaded_at ? timeNode(plugin.loaded_at) : '–'),
        el('dt', { text: 'Swaps' }), el('dd', { class: 'swaps', text: String(plugin.swaps ?? 0) }),
        el('dt', { text: 'Path' }), el('dd', null, el('code', { class: 'path', title: plugin.path || '', text: plugin.path || '–' })),
      );
      const error = plugin.last_error
        ? el('p', { class: 'message error last-error', text: `Last error: ${plugin.last_error}` })
        : null;
      const reload = el('button', {
        type: 'button', class: 'secondary admin-only reload', text: 'Reload',
        title: 'Hot-swap the plugin from its configured file',
        onclick: () => reloadPlugin(plugin.name, reload),
      });
      list.append(el('article', { class: 'plugin', 'data-plugin': plugin.name },
        el('div', { class: 'card-head' },
          el('h3', null, plugin.name, ' ', pill(plugin.state, plugin.state, 'plugin-state')),
          plugin.enabled === false ? null : reload),
        facts, error));
    }
  }

  async function reloadPlugin(name, button) {
    button.disabled = true;
    message($('plugin-message'), `Reloading ${name}…`);
    const result = await api('POST', `/api/plugins/${encodeURIComponent(name)}/reload`);
    button.disabled = false;
    if (result.stale) return;
    if (result.ok) {
      const plugin = result.body && result.body.plugin;
      message($('plugin-message'), `Reloaded ${name}${plugin && plugin.version ? ` (version ${plugin.version})` : ''}.`, 'ok');
    } else if (result.status === 403) {
      setRole(state.canReadDetails ? 'developer' : 'user');
      message($('plugin-message'), errorText(result), 'error');
    } else {
      message($('plugin-message'), `Reload failed: ${errorText(result)}`, 'error');
    }
    loadPlugins();
  }

  // ---------------------------------------------------------------- deployment views

  function loadDeploymentViews() {
    loadDashboard();
    loadActive();
    loadHistory();
    loadAudit();
    loadCalendar();
    loadSubscriptions();
  }

  // ---------------------------------------------------------------- audit log (admins)

  const AUDIT_PAGE = 25;

  /** The newest audit entries matching the filters; the host's own, so it shows whatever the
   *  plugin's state. Only for admins: anyone else is not asked (the host would refuse). */
  async function loadAudit() {
    if (state.role !== 'admin') return;
    const params = new URLSearchParams({ limit: String(AUDIT_PAGE) });
    for (const [name, id] of [['action', 'audit-action'], ['actor', 'audit-actor'], ['outcome', 'audit-outcome']]) {
      const value = $(id).value.trim();
      if (value) params.set(name, value);
    }
    const result = await api('GET', `/api/audit?${params}`);
    if (result.stale) return;
    const notice = $('audit-message');
    if (!result.ok || !result.body) {
      message(notice, errorText(result), 'error');
      return;
    }
    message(notice, '');
    const entries = Array.isArray(result.body.entries) ? result.body.entries : [];
    const rows = clear($('audit-rows'));
    if (!entries.length) {
      rows.append(el('tr', null, el('td', { colspan: 7, class: 'muted', text: 'No entries match.' })));
      return;
    }
    for (const entry of entries) {
      const actor = entry.actor ? `${entry.actor.key_name} (${entry.actor.role})` : 'no key';
      const via = entry.tool ? `${entry.via}: ${entry.tool}` : entry.via;
      const outcome = entry.outcome || {};
      const shown = outcome.error ? `${outcome.status} (${outcome.error})` : outcome.status;
      rows.append(el('tr', { 'data-seq': String(entry.seq) },
        el('td', { text: String(entry.seq) }),
        el('td', { text: entry.at || '' }),
        el('td', { text: actor }),
        el('td', { text: via || '' }),
        el('td', { text: entry.action || '' }),
        el('td', { class: 'wide', text: entry.resource || '' }),
        el('td', { class: `outcome-${outcome.status || ''}`, text: shown || '' })));
    }
  }

  // Live: every few seconds while an admin looks, and at once after each event.
  setInterval(() => { if (state.role === 'admin' && !document.hidden) loadAudit(); }, 5000);

  // ---------------------------------------------------------------- notifications (admins)

  const DELIVERIES_SHOWN = 20;
  const DELIVERY_STATES = new Set(['pending', 'delivered', 'dead']);

  /** Where a subscription sends, as the API shows it (the host masks secrets and tokens). */
  function channelTarget(channel) {
    switch (channel && channel.type) {
      case 'webhook': return channel.url || '–';
      case 'slack': return channel.webhook_url || '–';
      case 'email': return Array.isArray(channel.to) && channel.to.length ? channel.to.join(', ') : '–';
      default: return '–';
    }
  }

  /** Every subscription, then the chosen one's newest deliveries (the first one's when none is
   *  chosen). Only for admins, like the audit log: anyone else is not asked (the API would
   *  refuse) and the card is hidden; a refusal all the same is told on the card. */
  async function loadSubscriptions() {
    if (state.role !== 'admin' || state.unavailable) return;
    const notes = state.notifications;
    const seq = ++notes.seq;
    const result = await api('GET', `${API}/subscriptions`);
    if (result.stale || seq !== notes.seq) return;
    const notice = $('subscriptions-message');
    if (result.status === 403) {
      notes.selected = null;
      clear($('subscriptions-list'));
      clear($('deliveries-list'));
      show($('deliveries'), false);
      message(notice, 'Notifications need an admin key.');
      return;
    }
    if (!result.ok || !result.body) {
      if (result.status !== 503) message(notice, errorText(result), 'error');
      return;
    }
    message(notice, '');
    const list = Array.isArray(result.body.subscriptions) ? result.body.subscriptions : [];
    if (!list.some((subscription) => subscription.id === notes.selected)) {
      notes.selected = list.length ? list[0].id : null;
    }
    renderSubscriptions(list);
    loadDeliveries();
  }

  function renderSubscriptions(list) {
    const rows = clear($('subscriptions-list'));
    if (!list.length) {
      rows.append(el('tr', null, el('td', {
        colspan: 4, class: 'muted',
        text: 'No subscriptions. Create one with POST /api/deployment/subscriptions or deployment-mcp subscriptions create.',
      })));
      return;
    }
    for (const subscription of list) {
      const channel = subscription.channel || {};
      const choose = () => selectSubscription(subscription.id);
      rows.append(el('tr', {
        class: subscription.id === state.notifications.selected ? 'sub-row selected' : 'sub-row',
        tabindex: 0, 'data-subscription': subscription.id, title: 'Show its deliveries',
        onclick: choose,
        onkeydown: (e) => { if (e.key === 'Enter' || e.key === ' ') { e.preventDefault(); choose(); } },
      },
      el('td', null, el('code', { text: subscription.id })),
      el('td', { class: 'sub-events', text: Array.isArray(subscription.events) && subscription.events.length ? subscription.events.join(', ') : '–' }),
      el('td', null, el('span', { class: 'pill neutral channel-type', text: channel.type || '?' })),
      el('td', { class: 'sub-target' }, el('code', { text: channelTarget(channel) }))));
    }
  }

  function selectSubscription(id) {
    state.notifications.selected = id;
    for (const row of document.querySelectorAll('#subscriptions-list .sub-row')) {
      row.classList.toggle('selected', row.dataset.subscription === id);
    }
    clear($('deliveries-list'));
    message($('redeliver-message'), '');
    loadDeliveries();
  }

  /** The chosen subscription's newest deliveries, each with its state and latest attempt. */
  async function loadDeliveries() {
    const notes = state.notifications;
    const id = notes.selected;
    const seq = ++notes.deliveriesSeq;
    show($('deliveries'), Boolean(id));
    $('deliveries-of').textContent = id ? `of ${id}` : '';
    if (!id) {
      clear($('deliveries-list'));
      return;
    }
    const params = new URLSearchParams({ limit: String(DELIVERIES_SHOWN) });
    const result = await api('GET', `${API}/subscriptions/${encodeURIComponent(id)}/deliveries?${params}`);
    if (result.stale || seq !== notes.deliveriesSeq || id !== notes.selected) return;
    const notice = $('deliveries-message');
    if (!result.ok || !result.body) {
      if (result.status !== 503) message(notice, errorText(result), 'error');
      // Deleted meanwhile: the list is read again (and another one chosen).
      if (result.status === 404) debounce('subscriptions', 200, loadSubscriptions);
      return;
    }
    message(notice, '');
    renderDeliveries(id, Array.isArray(result.body.deliveries) ? result.body.deliveries : []);
  }

  /** The latest attempt's answer: its status and error, or what there is of them. */
  function lastAnswer(delivery) {
    const attempts = Array.isArray(delivery.attempts) ? delivery.attempts : [];
    const last = attempts[attempts.length - 1];
    if (!last) return null;
    const status = last.status === undefined || last.status === null ? '' : String(last.status);
    if (status && last.error) return { text: `${status}: ${last.error}`, failed: true };
    if (last.error) return { text: last.error, failed: true };
    return status ? { text: status, failed: false } : null;
  }

  function renderDeliveries(subscription, deliveries) {
    const rows = clear($('deliveries-list'));
    if (!deliveries.length) {
      rows.append(el('tr', null, el('td', { colspan: 5, class: 'muted', text: 'No deliveries yet.' })));
      return;
    }
    for (const delivery of deliveries) {
      const shown = DELIVERY_STATES.has(delivery.state) ? delivery.state : 'unknown';
      const answer = lastAnswer(delivery);
      const redelivered = delivery.redelivered ? ` (sent again by hand ${delivery.redelivered}×)` : '';
      const button = el('button', {
        type: 'button', class: 'secondary redeliver', text: 'Redeliver',
        'data-delivery': delivery.id, title: 'Send it again, with the same Idempotency-Key',
        onclick: () => redeliver(subscription, delivery.id, button),
      });
      rows.append(el('tr', { class: `delivery-row delivery-${shown}`, 'data-delivery': delivery.id, 'data-state': shown },
        el('td', null,
          el('span', { class: 'delivery-event', title: delivery.id, text: delivery.event || '–' }),
          el('code', { class: 'muted delivery-deployment', title: delivery.deployment_id || '', text: shortId(delivery.deployment_id) || '–' })),
        el('td', null,
          el('span', { class: `pill delivery-state state-${shown}`, text: shown }),
          shown === 'pending' && delivery.next_attempt_at
            ? el('span', { class: 'muted next-attempt' }, 'next ', timeNode(delivery.next_attempt_at))
            : null),
        el('td', { class: 'attempts', title: `${delivery.attempt_count ?? 0} attempts${redelivered}`, text: String(delivery.attempt_count ?? 0) }),
        el('td', { class: answer && answer.failed ? 'delivery-answer failed' : 'delivery-answer', title: answer ? answer.text : '', text: answer ? answer.text : 'not tried yet' }),
        el('td', null, button)));
    }
  }

  async function redeliver(subscription, delivery, button) {
    button.disabled = true;
    const out = $('redeliver-message');
    message(out, `Queuing ${delivery} again…`);
    const path = `${API}/subscriptions/${encodeURIComponent(subscription)}/deliveries/${encodeURIComponent(delivery)}/redeliver`;
    const result = await api('POST', path);
    button.disabled = false;
    if (result.stale) return;
    if (result.ok) {
      message(out, `Delivery ${delivery} is queued to be sent again.`, 'ok');
    } else {
      if (result.status === 403) setRole(state.canReadDetails ? 'developer' : 'user');
      message(out, errorText(result), 'error');
    }
    loadDeliveries();
    // The notifier sends it a moment later: read its attempt then.
    debounce('deliveries', 2000, loadDeliveries);
  }

  // Deliveries move on by themselves (attempts, retries): read them again every 10 s.
  setInterval(() => { if (state.key && !state.unavailable && !document.hidden) loadSubscriptions(); }, 10_000);

  async function loadDashboard() {
    const result = await api('GET', `${API}/dashboard`);
    if (result.stale || !result.ok || !result.body) return;
    const body = result.body;
    state.environments = Array.isArray(body.environments) ? body.environments : [];
    const counts = body.counts || {};
    const running = Array.isArray(body.active) ? body.active.length : 0;
    $('stat-total').textContent = String(body.total_count ?? 0);
    $('stat-running').textContent = String(running);
    $('stat-failed').textContent = String((counts.failed || 0) + (counts.interrupted || 0));
    const recent = body.recent || {};
    $('stat-success').textContent = typeof recent.success_rate === 'number' ? `${Math.round(recent.success_rate * 100)}%` : '–';
    $('stat-duration').textContent = formatDuration(recent.mean_duration_ms);
    renderEnvironments();
    renderTriggerChoices();
    renderEnvironmentFilter();
  }

  function target(environment) {
    switch (environment.connection_method) {
      case 'local':
        return Array.isArray(environment.command) && environment.command.length
          ? environment.command.join(' ')
          : environment.init_script_path || 'local command';
      case 'webhook':
        return environment.webhook_url || `${environment.host || '?'}:${environment.port ?? ''}/webhook/deploy`;
      default:
        return environment.port ? `${environment.host || '?'}:${environment.port}` : environment.host || '–';
    }
  }

  function renderEnvironments() {
    const cards = clear($('env-cards'));
    if (!state.environments.length) {
      cards.append(el('p', { class: 'muted', text: 'No environments are registered.' }));
      return;
    }
    for (const environment of state.environments) {
      const health = environment.last_health;
      let healthNode;
      if (!health && !environment.health_check_url) {
        healthNode = el('span', { class: 'muted', text: 'no health check URL' });
      } else if (!health) {
        healthNode = el('span', null, pill('not checked yet', 'unknown'));
      } else {
        const detail = health.error || (health.http_status ? `HTTP ${health.http_status}` : '');
        healthNode = el('span', { class: 'health' },
          pill(health.healthy ? 'healthy' : 'unhealthy', health.healthy ? 'active' : 'failed'),
          ' ', timeNode(health.checked_at),
          detail ? el('span', { class: 'muted detail', title: detail, text: ` · ${detail}` }) : null);
      }
      const last = environment.last_deployment;
      let lastNode;
      if (!last) {
        lastNode = el('span', { class: 'muted', text: 'never deployed' });
      } else {
        let outcome = last.status;
        let outcomeStatus = last.status;
        if (last.succeeded === true) { outcome = 'succeeded'; outcomeStatus = 'succeeded'; }
        // Not succeeded: failed, or how the whole deployment ended when it was stopped.
        if (last.succeeded === false) {
          outcome = ['cancelled', 'interrupted'].includes(last.status) ? last.status : 'failed';
          outcomeStatus = outcome;
        }
        lastNode = el('span', null, pill(outcome, outcomeStatus), ' ',
          last.finished_at ? timeNode(last.finished_at) : el('span', { class: 'muted', text: 'running' }),
          ' ', el('code', { class: 'muted', title: last.deployment_id, text: shortId(last.deployment_id) }));
      }
      cards.append(el('article', { class: `env ${environment.enabled === false ? 'disabled' : ''}`.trim(), 'data-environment': environment.environment_id },
        el('div', { class: 'env-head' },
          el('h3', { text: environment.environment_id }),
          environment.enabled === false ? pill('disabled', 'disabled') : null),
        el('dl', { class: 'facts' },
          el('dt', { text: 'Type' }), el('dd', { text: environment.environment_type || '–' }),
          el('dt', { text: 'Method' }), el('dd', { text: environment.connection_method || '–' }),
          el('dt', { text: 'Target' }), el('dd', null, el('code', { class: 'target', title: target(environment), text: target(environment) })),
          el('dt', { text: 'Version' }), el('dd', null,
            environment.deployed_version ? el('code', { text: environment.deployed_version }) : el('span', { class: 'muted', text: 'none yet' }),
            environment.previous_version ? el('span', { class: 'muted', text: ` (before: ${environment.previous_version})` }) : null),
          el('dt', { text: 'Health' }), el('dd', null, healthNode),
          el('dt', { text: 'Last run' }), el('dd', null, lastNode))));
    }
  }

  function renderTriggerChoices() {
    const box = $('trigger-environments');
    const checked = new Set([...box.querySelectorAll('input:checked')].map((input) => input.value));
    const first = !box.querySelector('input');
    clear(box);
    if (!state.environments.length) {
      box.append(el('span', { class: 'muted', text: 'No environments to deploy.' }));
      return;
    }
    for (const environment of state.environments) {
      const id = environment.environment_id;
      const input = el('input', { type: 'checkbox', name: 'environment', value: id });
      input.checked = first ? environment.enabled !== false && environment.connection_method === 'local' : checked.has(id);
      box.append(el('label', { class: 'check' }, input, ' ', el('span', { text: id }),
        el('span', { class: 'muted', text: ` ${environment.connection_method || ''}${environment.enabled === false ? ', disabled' : ''}` })));
    }
  }

  function renderEnvironmentFilter() {
    const select = $('filter-environment');
    const current = select.value;
    clear(select).append(el('option', { value: '', text: 'any' }));
    for (const environment of state.environments) {
      select.append(el('option', { value: environment.environment_id, text: environment.environment_id }));
    }
    select.value = state.environments.some((e) => e.environment_id === current) ? current : '';
  }

  // ---------------------------------------------------------------- calendar strip

  const CALENDAR_DAYS = 7;

  /** Windows and schedules per environment for a week from today's local midnight (`GET
   *  /calendar`): hatched where a window closes an environment, a mark where a schedule
   *  would deploy it. The host computes the spans by the rule a trigger is checked by. */
  async function loadCalendar() {
    const notice = $('calendar-message');
    if (!state.canReadDetails) {
      state.calendar = null;
      clear($('calendar-strip'));
      clear($('calendar-notes'));
      message(notice, 'The calendar needs a developer or admin key.');
      renderWindowWarning();
      return;
    }
    const from = new Date();
    from.setHours(0, 0, 0, 0);
    const params = new URLSearchParams({ from: from.toISOString(), days: String(CALENDAR_DAYS) });
    // Reads overlap (a timer, a form change): only the newest one's answer is shown.
    const seq = ++state.calendarSeq;
    const result = await api('GET', `${API}/calendar?${params}`);
    if (result.stale || seq !== state.calendarSeq) return;
    if (result.status === 403) {
      lostDetails();
      loadCalendar();
      return;
    }
    if (!result.ok || !result.body) {
      message(notice, errorText(result), 'error');
      return;
    }
    message(notice, '');
    state.calendar = result.body;
    renderCalendar();
    renderWindowWarning();
  }

  // Spans end and schedules fire as time passes; windows change through the API.
  setInterval(() => { if (state.key && !state.unavailable && !document.hidden) loadCalendar(); }, 60_000);

  function formatDay(date) {
    return date.toLocaleDateString(undefined, { weekday: 'short', day: 'numeric', month: 'short' });
  }

  function renderCalendar() {
    const calendar = state.calendar;
    const strip = clear($('calendar-strip'));
    const notes = clear($('calendar-notes'));
    if (!calendar) return;
    const from = Date.parse(calendar.from);
    const to = Date.parse(calendar.to);
    if (!(to > from)) return;
    const place = (text) => Math.min(100, Math.max(0, ((Date.parse(text) - from) / (to - from)) * 100));
    const put = (node, left, width) => {
      node.style.left = `${left}%`;
      if (width !== undefined) node.style.width = `${width}%`;
      return node;
    };
    $('calendar-range').textContent = `${formatDay(new Date(from))} – ${formatDay(new Date(to - 1))}`;
    // Day lines at local midnights (a DST day is 23 or 25 hours long).
    const days = el('div', { class: 'cal-days', 'aria-hidden': 'true' });
    for (const day = new Date(from); day.getTime() < to; day.setDate(day.getDate() + 1)) {
      const label = day.toLocaleDateString(undefined, { weekday: 'short', day: 'numeric' });
      days.append(put(el('span', { class: 'cal-day', title: formatDay(day), text: label }), place(day.toISOString())));
    }
    strip.append(el('span'), days);
    const now = new Date().toISOString();
    const windows = new Map((calendar.windows || []).map((window) => [window.id, window]));
    const schedules = new Map((calendar.schedules || []).map((schedule) => [schedule.id, schedule]));
    const groups = calendar.groups || [];
    for (const row of calendar.environments || []) {
      const group = groups[row.group] || {};
      const track = el('div', { class: 'cal-track', 'data-environment': row.environment_id });
      for (const closed of group.closed || []) {
        const window = windows.get(closed.window) || {};
        const why = window.reason ? ` (${window.reason})` : '';
        track.append(put(el('span', {
          class: 'cal-closed',
          'data-window': closed.window,
          title: `Closed by ${window.kind || ''} window ${closed.window}${why}: ${formatTime(closed.start)} – ${formatTime(closed.end)}`,
        }), place(closed.start), place(closed.end) - place(closed.start)));
      }
      for (const id of group.schedules || []) {
        for (const run of (schedules.get(id) || {}).runs || []) {
          track.append(put(el('span', {
            class: 'cal-run', 'data-schedule': id, title: `Schedule ${id} deploys it at ${formatTime(run)}`,
          }), place(run)));
        }
      }
      if (group.exact_until) {
        // Past this instant the host did not work the spans out (too many occurrences).
        track.append(put(el('span', { class: 'cal-unknown', title: `Not worked out after ${formatTime(group.exact_until)}: too many window occurrences for one answer` }),
          place(group.exact_until), 100 - place(group.exact_until)));
      }
      if (now >= calendar.from && now < calendar.to) track.append(put(el('span', { class: 'cal-now' }), place(now)));
      strip.append(el('span', { class: 'cal-label', text: row.environment_id }), track);
    }
    if (!(calendar.environments || []).length) {
      strip.append(el('p', { class: 'muted', text: 'No environments are registered.' }));
    }
    // The same in words: each schedule's next run in the range, each window's kind and reason.
    for (const schedule of calendar.schedules || []) {
      const next = (schedule.runs || []).find((run) => run >= now);
      const when = !schedule.enabled ? 'disabled' : next ? `next ${formatTime(next)}` : 'no run this week';
      const targets = (calendar.environments || []).filter((row) => ((groups[row.group] || {}).schedules || []).includes(schedule.id)).length;
      notes.append(el('li', { 'data-schedule': schedule.id },
        'Schedule ', el('code', { text: schedule.id }), `: ${when}, ${targets} environment${targets === 1 ? '' : 's'}`,
        schedule.reason ? ` (${schedule.reason})` : ''));
    }
    for (const window of calendar.windows || []) {
      const covered = (calendar.environments || []).filter((row) => ((groups[row.group] || {}).windows || []).includes(window.id)).length;
      notes.append(el('li', { 'data-window': window.id },
        `${window.kind === 'deny' ? 'Freeze' : 'Allow'} window `, el('code', { text: window.id }),
        `: ${(window.open || []).length} span${(window.open || []).length === 1 ? '' : 's'} this week, ${covered} environment${covered === 1 ? '' : 's'}`,
        window.reason ? ` (${window.reason})` : ''));
    }
  }

  /** The environments the form would deploy: those ticked, or the enabled ones with the tags. */
  function formTargets() {
    const ticked = [...$('trigger-environments').querySelectorAll('input:checked')].map((input) => input.value);
    let tags;
    try {
      tags = selector($('trigger-selector').value);
    } catch (_) {
      return ticked;
    }
    if (!tags) return ticked;
    return state.environments
      .filter((environment) => environment.enabled !== false
        && Object.entries(tags).every(([key, value]) => (environment.tags || {})[key] === value))
      .map((environment) => environment.environment_id);
  }

  /** Says on the form, before it is sent, which window closes a chosen environment now and
   *  when it opens (the host still decides: it answers 423 on the same rule). */
  function renderWindowWarning() {
    const out = $('trigger-window');
    const calendar = state.calendar;
    const now = new Date().toISOString();
    const blocked = [];
    if (calendar) {
      const groups = calendar.groups || [];
      const rows = new Map((calendar.environments || []).map((row) => [row.environment_id, groups[row.group] || {}]));
      for (const id of formTargets()) {
        const closed = ((rows.get(id) || {}).closed || []);
        const index = closed.findIndex((span) => span.start <= now && now < span.end);
        if (index < 0) continue;
        // Spans that follow on without a gap (a freeze, then outside an allow window) keep it closed.
        let end = closed[index].end;
        for (const span of closed.slice(index + 1)) {
          if (span.start !== end) break;
          end = span.end;
        }
        blocked.push({ id, window: closed[index].window, opens: end < calendar.to ? end : null });
      }
    }
    if (!blocked.length) {
      delete out.dataset.window;
      message(out, '');
      return;
    }
    out.dataset.window = blocked[0].window;
    const parts = blocked.slice(0, 3).map((entry) => `${entry.id} is closed by window ${entry.window} ${entry.opens ? `until ${formatTime(entry.opens)}` : 'all week'}`);
    const more = blocked.length > 3 ? ` (and ${blocked.length - 3} more)` : '';
    const overriding = $('trigger-override').value.trim();
    message(out, `${parts.join('; ')}${more}. ${overriding ? 'The override reason will be kept with the deployment.' : 'Deploying now needs an override reason.'}`);
  }

  /** A choice on the form changed: read the windows again (they may have changed), then say. */
  function formChanged() {
    renderWindowWarning();
    debounce('calendar', 300, loadCalendar);
  }

  // ---------------------------------------------------------------- active deployment

  async function loadActive() {
    const result = await api('GET', `${API}/status`);
    if (result.stale || !result.ok || !result.body) return;
    const body = result.body;
    const running = Array.isArray(body.active) ? body.active : [];
    // Keep showing the deployment on screen while it runs; else the newest running or latest.
    if (state.active && !TERMINAL.has(state.active.status)) {
      loadDetail(state.active.deployment_id);
      return;
    }
    const chosen = running[0] || body.latest;
    if (!chosen) {
      renderActive();
      return;
    }
    showDeployment(chosen);
  }

  /** Shows a deployment in the active panel from a summary, then loads its full record. */
  function showDeployment(summary) {
    if (!state.active || state.active.deployment_id !== summary.deployment_id) {
      state.active = {
        deployment_id: summary.deployment_id,
        status: summary.status || 'pending',
        progress: summary.progress || 0,
        version: summary.version,
        triggered_by: summary.triggered_by,
        environments: summary.environments || [],
        results: [],
        logs: [],
        errors: summary.error ? [summary.error] : [],
      };
      message($('cancel-message'), '');
      message($('gate-message'), '');
    }
    renderActive();
    loadDetail(summary.deployment_id);
  }

  /** The phase to show after reading a deployment: what was read, unless a phase event came
   * while the read was on its way (the event is newer) and what was read is not an end. */
  function fetchedPhase(shown, read, phaseEventsAtRead) {
    if (state.phaseEvents !== phaseEventsAtRead && !TERMINAL.has(read)) return shown;
    return later(PHASES, shown, read);
  }

  async function loadDetail(id) {
    if (!state.canReadDetails) {
      loadSummary(id);
      return;
    }
    const seq = ++state.detailSeq;
    const phaseEvents = state.phaseEvents;
    const result = await api('GET', `${API}/deployments/${encodeURIComponent(id)}`);
    if (result.stale) return;
    if (result.status === 403) {
      lostDetails();
      loadSummary(id);
      return;
    }
    if (!result.ok || !result.body || seq < state.detailApplied) return;
    if (!state.active || state.active.deployment_id !== id) return;
    state.detailApplied = seq;
    const record = result.body;
    const active = state.active;
    // Events may already have shown a later state than this answer: never go back.
    active.status = fetchedPhase(active.status, record.status, phaseEvents);
    active.progress = Math.max(active.progress || 0, record.progress || 0);
    active.version = record.version;
    active.triggered_by = record.triggered_by;
    active.created_at = record.created_at;
    active.finished_at = record.finished_at;
    active.duration_ms = record.duration_ms;
    active.environments = record.environments || active.environments;
    active.errors = Array.isArray(record.errors) ? record.errors : [];
    active.batches = Array.isArray(record.batches) ? record.batches : [];
    active.gate = record.gate || null;
    if (Array.isArray(record.results)) {
      for (const row of record.results) mergeResult(row);
    }
    if (Array.isArray(record.logs)) active.logs = record.logs.slice(-LOG_TAIL);
    renderActive();
  }

  /** Without the developer role: the summary (`/status?id=`) has each environment's status. */
  async function loadSummary(id) {
    const seq = ++state.detailSeq;
    const phaseEvents = state.phaseEvents;
    const result = await api('GET', `${API}/status?id=${encodeURIComponent(id)}`);
    if (result.stale || !result.ok || !result.body || seq < state.detailApplied) return;
    if (!state.active || state.active.deployment_id !== id) return;
    state.detailApplied = seq;
    const entry = result.body;
    const active = state.active;
    active.status = fetchedPhase(active.status, entry.status, phaseEvents);
    active.progress = Math.max(active.progress || 0, entry.progress || 0);
    for (const name of ['version', 'triggered_by', 'created_at', 'finished_at', 'duration_ms']) {
      if (entry[name] !== undefined) active[name] = entry[name];
    }
    // A summary names only the first environments of a large deployment; keep a longer list.
    if (Array.isArray(entry.environments) && entry.environments.length >= (active.environments || []).length) {
      active.environments = entry.environments;
    }
    active.errors = entry.error ? [entry.error] : [];
    active.batches = Array.isArray(entry.batches) ? entry.batches : [];
    active.gate = entry.gate || null;
    for (const [environment, status] of Object.entries(entry.environment_status || {})) {
      mergeResult({ environment_id: environment, status });
    }
    renderActive();
  }

  function mergeResult(row) {
    if (!state.active || !row || !row.environment_id) return;
    const results = state.active.results;
    const index = results.findIndex((r) => r.environment_id === row.environment_id);
    if (index < 0) results.push(row);
    else if (later(TARGET_STATES, results[index].status, row.status) === row.status) results[index] = { ...results[index], ...row };
  }


  function renderActive() {
    const active = state.active;
    show($('active-empty'), !active);
    show($('active-body'), Boolean(active));
    const cancel = $('cancel-button');
    if (!active) {
      show(cancel, false);
      return;
    }
    const terminal = TERMINAL.has(active.status);
    $('active-title').textContent = terminal ? 'Latest deployment' : 'Active deployment';
    const phase = $('active-phase');
    phase.textContent = active.status;
    phase.className = `pill phase ${statusClass(active.status)}`;
    phase.dataset.status = active.status;
    $('active-id').textContent = active.deployment_id;
    const meta = [];
    if (active.version) meta.push(`version ${active.version}`);
    if (active.triggered_by) meta.push(`by ${active.triggered_by}`);
    if (active.created_at) meta.push(`started ${formatTime(active.created_at)}`);
    if (active.duration_ms !== undefined && active.duration_ms !== null) meta.push(`took ${formatDuration(active.duration_ms)}`);
    $('active-meta').textContent = meta.join(' · ');
    const progress = Math.max(0, Math.min(100, Number(active.progress) || 0));
    $('active-progress').setAttribute('aria-valuenow', String(progress));
    $('active-progress').className = `progress ${statusClass(active.status)}`;
    $('active-progress-bar').style.width = `${progress}%`;
    $('active-progress-text').textContent = `${progress}%`;
    const errors = active.errors || [];
    message($('active-errors'), errors.length ? errors.join(' · ') : '', 'error');
    show(cancel, !terminal && state.role !== 'developer' && state.role !== 'user');
    renderGate(active);
    renderBatches(active);

    const rows = clear($('active-results'));
    const ids = [...new Set([...(active.environments || []), ...active.results.map((r) => r.environment_id)])];
    for (const id of ids) {
      const result = active.results.find((r) => r.environment_id === id) || { environment_id: id, status: 'pending' };
      rows.append(el('tr', { 'data-environment': id },
        el('td', { text: id }),
        el('td', null, pill(result.status, result.status, 'env-status')),
        el('td', { text: formatDuration(result.duration_ms) }),
        el('td', { class: 'wide', text: result.exit_code ?? '–' }),
        el('td', { class: 'error-cell', title: result.error || '', text: result.error || '' })));
    }
    if (!ids.length) rows.append(el('tr', null, el('td', { colspan: 5, class: 'muted', text: 'No environments.' })));

    const log = $('active-log');
    const stick = log.scrollTop + log.clientHeight >= log.scrollHeight - 8;
    clear(log);
    if (!state.canReadDetails && !active.logs.length) {
      log.append(el('span', { class: 'muted', text: 'Log lines appear here live; the full log needs the developer role.' }));
    } else if (!active.logs.length) {
      log.append(el('span', { class: 'muted', text: 'No output yet.' }));
    }
    for (const line of active.logs) log.append(logLine(line));
    if (stick) log.scrollTop = log.scrollHeight;
  }

  /** The canary gate: a banner while the deployment waits, with Approve / Reject for admins. */
  function renderGate(active) {
    const waiting = active.status === 'awaiting_approval';
    show($('gate-banner'), waiting);
    if (!waiting) return;
    const gate = active.gate || {};
    const until = gate.deadline_at ? ` until ${formatTime(gate.deadline_at)}` : '';
    const who = gate.not_by ? `any admin but ${gate.not_by} (who triggered it)` : 'any admin';
    $('gate-text').textContent = `The canary succeeded. This deployment waits for approval${until}; the rest is not started. Who may approve: ${who}.`;
  }

  /** Each batch with its state (a rollout of more than one batch). */
  function renderBatches(active) {
    const list = clear($('active-batches'));
    const batches = active.batches || [];
    show(list, batches.length > 1);
    for (const batch of batches) {
      list.append(el('li', { class: 'batch', 'data-batch': String(batch.number), 'data-status': batch.status },
        el('span', { class: 'batch-name', text: `${batch.kind === 'canary' ? 'Canary' : 'Batch'} ${batch.number}` }), ' ',
        pill(batch.status, batch.status), ' ',
        el('span', { class: 'muted', text: (batch.environments || []).join(', ') })));
    }
  }

  async function decideGate(decision) {
    const active = state.active;
    if (!active) return;
    const buttons = [$('approve-button'), $('reject-button')];
    for (const button of buttons) button.disabled = true;
    message($('gate-message'), decision === 'approve' ? 'Approving…' : 'Rejecting…');
    const result = await api('POST', `${API}/deployments/${encodeURIComponent(active.deployment_id)}/${decision}`);
    for (const button of buttons) button.disabled = false;
    if (result.stale) return;
    if (result.ok) {
      message($('gate-message'), decision === 'approve' ? 'Approved: the rollout goes on.' : 'Rejected: the deployment is cancelled.', 'ok');
      loadDetail(active.deployment_id);
    } else {
      if (result.status === 403) setRole(state.canReadDetails ? 'developer' : 'user');
      message($('gate-message'), errorText(result), 'error');
    }
  }

  function logLine(line) {
    return el('div', { class: `line ${line.stream === 'stderr' ? 'stderr' : ''} ${line.stream === 'system' ? 'system' : ''}`.trim() },
      el('span', { class: 'ts', title: line.ts || '', text: formatTime(line.ts) }), ' ',
      line.environment ? el('span', { class: 'log-env', text: `[${line.environment}]` }) : null,
      line.environment ? ' ' : null,
      el('span', { class: 'text', text: line.line ?? '' }));
  }

  async function cancelActive() {
    const active = state.active;
    if (!active) return;
    const button = $('cancel-button');
    button.disabled = true;
    message($('cancel-message'), 'Cancelling…');
    const result = await api('POST', `${API}/deployments/${encodeURIComponent(active.deployment_id)}/cancel`);
    button.disabled = false;
    if (result.stale) return;
    if (result.ok) {
      message($('cancel-message'), `Deployment ${result.body && result.body.status === 'cancelling' ? 'is being cancelled' : 'cancelled'}.`, 'ok');
      loadDetail(active.deployment_id);
    } else {
      if (result.status === 403) setRole(state.canReadDetails ? 'developer' : 'user');
      message($('cancel-message'), errorText(result), 'error');
    }
  }

  // ---------------------------------------------------------------- trigger

  /** A count (`2`) or a percentage (`25%`) as the API takes it; `undefined` when empty. */
  function amount(text, field) {
    const value = text.trim();
    if (!value) return undefined;
    if (/^\d+%$/.test(value)) return value;
    if (/^\d+$/.test(value)) return Number(value);
    throw new Error(`${field}: a count such as 2 or a percentage such as 25%`);
  }

  /** `tier=prod, region=eu` as a selector; `undefined` when empty. */
  function selector(text) {
    const pairs = text.split(',').map((pair) => pair.trim()).filter(Boolean);
    if (!pairs.length) return undefined;
    const tags = {};
    for (const pair of pairs) {
      const at = pair.indexOf('=');
      if (at < 1) throw new Error(`Tags: "${pair}" is not key=value`);
      tags[pair.slice(0, at).trim()] = pair.slice(at + 1).trim();
    }
    return tags;
  }

  /** Shows only the rollout fields of the chosen strategy. */
  function strategyChanged() {
    const kind = $('trigger-strategy').value;
    for (const label of document.querySelectorAll('#trigger-rollout [data-strategy]')) {
      show(label, label.dataset.strategy === kind);
    }
  }

  /** The trigger's body from the form (throws naming the field at fault). */
  function triggerBody() {
    const environments = [...$('trigger-environments').querySelectorAll('input:checked')].map((input) => input.value);
    const tags = selector($('trigger-selector').value);
    if (environments.length && tags) throw new Error('Pick environments or give tags, not both.');
    if (!environments.length && !tags) throw new Error('Pick at least one environment, or give tags.');
    const body = tags ? { selector: tags } : { environments };
    const version = $('trigger-version').value.trim();
    if (version) body.version = version;
    const kind = $('trigger-strategy').value;
    if (kind === 'rolling') {
      body.strategy = { type: 'rolling', batch_size: amount($('trigger-batch-size').value, 'Batch size') ?? 1 };
    } else if (kind === 'canary') {
      body.strategy = { type: 'canary', canary: amount($('trigger-canary').value, 'Canary') ?? 1, gate: $('trigger-gate').value };
    }
    const maxFailures = amount($('trigger-max-failures').value, 'Max failures');
    if (maxFailures !== undefined) body.max_failures = maxFailures;
    const rollback = $('trigger-rollback').value;
    if (rollback !== 'none') body.rollback = rollback;
    const reason = $('trigger-override').value.trim();
    if (reason) body.override = { reason };
    return body;
  }

  async function trigger(event) {
    event.preventDefault();
    const out = $('trigger-message');
    delete out.dataset.window;
    let body;
    try {
      body = triggerBody();
    } catch (error) {
      message(out, error.message, 'error');
      return;
    }
    const button = $('trigger-button');
    button.disabled = true;
    message(out, 'Starting…');
    const result = await api('POST', `${API}/trigger-local`, body);
    button.disabled = false;
    if (result.stale) return;
    if (result.status === 202 && result.body) {
      const id = result.body.deployment_id;
      message(out, `Started deployment ${id}.`, 'ok');
      out.dataset.deploymentId = id;
      $('trigger-override').value = '';
      showDeployment({ deployment_id: id, status: result.body.status, progress: 0, version: body.version || '', environments: body.environments || [] });
      debounce('dashboard', 300, loadDashboard);
      debounce('history', 300, loadHistory);
      return;
    }
    if (result.status === 403) setRole(state.canReadDetails ? 'developer' : 'user');
    if (result.status === 423 && result.body) {
      // A window closes a target: say which and when it opens; an override reason passes.
      const opens = result.body.opens_at ? `it opens ${formatTime(result.body.opens_at)}` : 'it does not open within 400 days';
      out.dataset.window = result.body.window || '';
      debounce('calendar', 0, loadCalendar);
      message(out, `Closed by window ${result.body.window}: ${opens}. To deploy anyway, give an override reason.`, 'error');
      return;
    }
    const prefix = result.status === 409 ? 'Busy: ' : result.status === 422 ? 'Refused: ' : '';
    message(out, prefix + errorText(result), 'error');
  }

  // ---------------------------------------------------------------- history

  async function loadHistory() {
    const history = state.history;
    const params = new URLSearchParams({ limit: String(HISTORY_PAGE) });
    const cursor = history.cursors[history.index];
    if (cursor) params.set('cursor', cursor);
    const status = $('filter-status').value;
    const environment = $('filter-environment').value;
    if (status) params.set('status', status);
    if (environment) params.set('environment', environment);
    const result = await api('GET', `${API}/history?${params}`);
    if (result.stale) return;
    const notice = $('history-message');
    if (result.status === 403) {
      lostDetails();
      clear($('history-rows'));
      message(notice, 'The history needs a key with the developer role.', 'error');
      showHistoryTable(false);
      return;
    }
    if (!result.ok || !result.body) {
      if (result.status !== 503) message(notice, errorText(result), 'error');
      return;
    }
    message(notice, '');
    showHistoryTable(true);
    const body = result.body;
    const entries = Array.isArray(body.history) ? body.history : [];
    history.next = body.next_cursor || null;
    const rows = clear($('history-rows'));
    if (!entries.length) {
      rows.append(el('tr', null, el('td', { colspan: 7, class: 'muted', text: history.index ? 'No more deployments.' : 'No deployments match.' })));
    }
    for (const entry of entries) {
      const failed = new Set(entry.failed_environments || []);
      const listed = entry.environments || [];
      const more = (entry.environment_count || listed.length) - listed.length;
      const envs = listed.map((id) => (failed.has(id) ? `${id} ✗` : id)).join(', ') + (more > 0 ? ` (+${more} more)` : '');
      const row = el('tr', {
        tabindex: 0, 'data-deployment-id': entry.deployment_id, 'data-status': entry.status,
        title: entry.error || 'Open the log',
        onclick: () => openLog(entry),
        onkeydown: (e) => { if (e.key === 'Enter' || e.key === ' ') { e.preventDefault(); openLog(entry); } },
      },
      el('td', null, el('code', { title: entry.deployment_id, text: shortId(entry.deployment_id) })),
      el('td', null, pill(entry.status, entry.status, 'history-status')),
      el('td', { class: 'wide', text: entry.version || '–' }),
      el('td', { class: 'wide', text: envs || '–' }),
      el('td', null, timeNode(entry.created_at)),
      TERMINAL.has(entry.status)
        ? el('td', { class: 'duration', text: formatDuration(entry.duration_ms) })
        : el('td', { class: 'duration', 'data-running-since': entry.created_at || '', text: runningFor(entry.created_at) }),
      el('td', { class: 'wide', text: entry.triggered_by || '–' }));
      rows.append(row);
    }
    const start = history.index * HISTORY_PAGE;
    const total = body.total_count ?? entries.length;
    $('history-page').textContent = entries.length
      ? `${start + 1}–${start + entries.length} of ${total}`
      : `${total} in all`;
    $('history-prev').disabled = history.index === 0;
    $('history-next').disabled = !history.next;
  }

  function showHistoryTable(visible) {
    for (const node of document.querySelectorAll('#history .table-wrap, #history .pager, #history-filters')) show(node, visible);
  }

  function historyFiltersChanged() {
    state.history = { cursors: [null], index: 0, next: null };
    loadHistory();
  }

  function historyOlder() {
    const history = state.history;
    if (!history.next) return;
    history.cursors = history.cursors.slice(0, history.index + 1);
    history.cursors.push(history.next);
    history.index += 1;
    loadHistory();
  }

  function historyNewer() {
    const history = state.history;
    if (history.index === 0) return;
    history.index -= 1;
    loadHistory();
  }

  // ---------------------------------------------------------------- log dialog

  async function openLog(entry) {
    const dialog = $('log-dialog');
    state.logDialogId = entry.deployment_id;
    state.logDialogSeen = new Set();
    $('log-dialog').dataset.complete = 'true'; // no live lines until the stored ones are shown
    $('log-title').textContent = `Log of ${entry.deployment_id}`;
    $('log-meta').textContent = 'Loading…';
    const lines = clear($('log-lines'));
    if (!dialog.open) dialog.showModal();
    // The newest lines: a log may hold more than one page.
    const result = await api('GET', `${API}/deployments/${encodeURIComponent(entry.deployment_id)}/logs?tail=10000`);
    if (result.stale || state.logDialogId !== entry.deployment_id) return;
    if (!result.ok || !result.body) {
      if (result.status === 403) lostDetails();
      $('log-meta').textContent = errorText(result);
      return;
    }
    const body = result.body;
    const list = Array.isArray(body.lines) ? body.lines : [];
    const parts = [`status ${body.status}`, `${list.length} line${list.length === 1 ? '' : 's'}`];
    const stored = typeof body.stored_lines === 'number' ? body.stored_lines : list.length;
    if (body.first_line > 0) parts.push(`the last ${list.length} of ${stored} stored lines`);
    if (body.total_lines && body.total_lines > stored) parts.push(`${body.total_lines - stored} lines past the log limit were not kept`);
    if (!body.complete) parts.push('still running: new lines appear live');
    $('log-meta').textContent = parts.join(' · ');
    dialog.dataset.complete = String(Boolean(body.complete));
    // Lines that came as events while the log loaded are in the answer too: show them once.
    state.logDialogSeen = new Set(list.map(lineKey));
    clear(lines);
    if (!list.length) lines.append(el('span', { class: 'muted', text: 'This deployment wrote no log lines.' }));
    for (const line of list) lines.append(logLine(line));
  }

  function lineKey(line) {
    return `${line.ts}|${line.environment || ''}|${line.stream}|${line.line}`;
  }

  function closeLog() {
    state.logDialogId = null;
    const dialog = $('log-dialog');
    if (dialog.open) dialog.close();
  }

  // ---------------------------------------------------------------- live events (SSE over fetch)

  function setLive(text, kind) {
    const node = $('live-status');
    node.textContent = text;
    node.className = `pill ${kind}`;
    node.dataset.state = kind === 'good' ? 'live' : kind === 'bad' ? 'down' : 'connecting';
  }

  function stopEvents() {
    const events = state.events;
    clearTimeout(events.timer);
    events.timer = null;
    if (events.controller) events.controller.abort();
    events.controller = null;
    events.connected = false;
    events.connectedBefore = false;
    events.lastId = null;
    events.retry = 0;
    setLive('offline', 'neutral');
  }

  function reconnectSoon(delay) {
    const events = state.events;
    clearTimeout(events.timer);
    if (events.controller) events.controller.abort();
    events.controller = null;
    events.timer = setTimeout(connectEvents, delay);
  }

  async function connectEvents() {
    const events = state.events;
    if (!state.key || events.controller) return;
    const generation = state.generation;
    const controller = new AbortController();
    events.controller = controller;
    setLive('connecting…', 'busy');
    const headers = { Accept: 'text/event-stream', 'X-API-Key': state.key };
    if (events.lastId !== null) headers['Last-Event-ID'] = events.lastId;
    let failure = 'the live stream ended';
    try {
      const response = await fetch(`${API}/events`, { headers, cache: 'no-store', credentials: 'omit', signal: controller.signal });
      if (!response.ok || !response.body) {
        let body = null;
        try { body = await response.json(); } catch (_) { body = null; }
        failure = (body && body.message) || `HTTP ${response.status}`;
        if (response.status === 401) {
          if (generation === state.generation) signOut(failure);
          return;
        }
        if (response.status === 503 && body && body.error === 'plugin_unavailable') setUnavailable(body.message);
        if (response.status === 403) failure = 'live updates need a key with the user role';
      } else {
        events.connected = true;
        events.retry = 0;
        const connectedBefore = events.connectedBefore;
        events.connectedBefore = true;
        setLive('live', 'good');
        $('live-status').title = 'Live updates are connected';
        // Events missed while disconnected are replayed from Last-Event-ID; without one
        // (first connect, or after a reset) the views are reloaded.
        if (events.lastId === null && connectedBefore && !state.unavailable) {
          debounce('reload-views', 50, () => { loadDashboard(); loadActive(); loadHistory(); loadAudit(); });
        }
        await readEvents(response.body, controller.signal);
      }
    } catch (error) {
      if (controller.signal.aborted) return;
      failure = error.message || String(error);
    }
    if (generation !== state.generation || events.controller !== controller) return;
    events.controller = null;
    events.connected = false;
    // 1 s, 2 s, 4 s … 30 s, with a little jitter so many pages do not return at once.
    const delay = Math.min(30000, 1000 * 2 ** Math.min(events.retry, 5)) + Math.floor(Math.random() * 250);
    events.retry += 1;
    setLive(state.unavailable ? 'paused: plugin down' : `reconnecting in ${Math.round(delay / 1000)} s`, 'bad');
    $('live-status').title = `Live updates stopped: ${failure}`;
    if (events.retry > 1 || state.unavailable) loadPlugins();
    events.timer = setTimeout(connectEvents, delay);
  }

  /** Reads a text/event-stream body: `field: value` lines; a blank line ends an event. */
  async function readEvents(stream, signal) {
    const reader = stream.getReader();
    const decoder = new TextDecoder();
    let buffer = '';
    let event = { id: null, type: '', data: [] };
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done || signal.aborted) break;
        buffer += decoder.decode(value, { stream: true });
        let newline;
        while ((newline = buffer.search(/\r\n|\r|\n/)) >= 0) {
          // A lone CR at the end may be the first half of CRLF: wait for more.
          if (buffer[newline] === '\r' && newline === buffer.length - 1) break;
          const line = buffer.slice(0, newline);
          buffer = buffer.slice(newline + (buffer.startsWith('\r\n', newline) ? 2 : 1));
          if (line === '') {
            if (event.id !== null) state.events.lastId = event.id;
            if (event.data.length) dispatchEvent(event.type || 'message', event.data.join('\n'));
            event = { id: null, type: '', data: [] };
            continue;
          }
          if (line.startsWith(':')) continue;
          const colon = line.indexOf(':');
          const field = colon < 0 ? line : line.slice(0, colon);
          let value = colon < 0 ? '' : line.slice(colon + 1);
          if (value.startsWith(' ')) value = value.slice(1);
          if (field === 'data') event.data.push(value);
          else if (field === 'event') event.type = value;
          else if (field === 'id' && !value.includes('\0')) event.id = value;
        }
      }
    } finally {
      try { reader.releaseLock(); } catch (_) { /* already released */ }
    }
  }

  function dispatchEvent(type, text) {
    let data = null;
    try {
      data = JSON.parse(text);
    } catch (_) {
      data = null;
    }
    switch (type) {
      case 'deployment.phase': onPhase(data); break;
      case 'deployment.environment': onEnvironment(data); break;
      case 'deployment.log': onLog(data); break;
      case 'environment.health': onHealth(data); break;
      case 'deployment.batch':
      case 'deployment.gate':
        if (data && state.active && state.active.deployment_id === data.deployment_id) {
          debounce('detail', 100, () => loadDetail(data.deployment_id));
        }
        break;
      case 'reset':
      case 'lagged':
        // Some events were dropped: this page's state may be behind, so read it again.
        state.events.lastId = null;
        loadDashboard();
        loadActive();
        loadHistory();
        break;
      default: break;
    }
  }

  function onPhase(data) {
    if (!data || !data.deployment_id) return;
    const active = state.active;
    if (!active || active.deployment_id !== data.deployment_id) {
      // A new deployment takes the panel unless the one shown still runs.
      if (!active || TERMINAL.has(active.status)) {
        if (!TERMINAL.has(data.status) || !active) showDeployment(data);
      }
    } else {
      state.phaseEvents += 1;
      active.status = later(PHASES, active.status, data.status);
      active.progress = Math.max(active.progress || 0, data.progress || 0);
      if (Array.isArray(data.environments)) active.environments = data.environments;
      if (Array.isArray(data.errors)) active.errors = data.errors;
      renderActive();
      if (TERMINAL.has(data.status)) debounce('detail', 100, () => loadDetail(data.deployment_id));
    }
    debounce('history', 200, loadHistory);
    // A deployment that ended is notified: its deliveries appear a moment later.
    if (TERMINAL.has(data.status)) debounce('subscriptions', 1500, loadSubscriptions);
    if (data.previous === null || data.previous === undefined || TERMINAL.has(data.status)) debounce('dashboard', 200, loadDashboard);
  }

  function onEnvironment(data) {
    if (!data || !state.active || state.active.deployment_id !== data.deployment_id) return;
    state.active.progress = Math.max(state.active.progress || 0, data.progress || 0);
    mergeResult(data.environment);
    renderActive();
  }

  function onLog(data) {
    if (!data || !Array.isArray(data.lines)) return;
    if (state.active && state.active.deployment_id === data.deployment_id) {
      state.active.logs = state.active.logs.concat(data.lines).slice(-LOG_TAIL);
      renderActive();
    }
    if (state.logDialogId === data.deployment_id && $('log-dialog').dataset.complete === 'false') {
      const box = $('log-lines');
      for (const line of data.lines) {
        const key = lineKey(line);
        if (state.logDialogSeen.has(key)) continue;
        if (!state.logDialogSeen.size) clear(box);
        state.logDialogSeen.add(key);
        box.append(logLine(line));
      }
    }
  }

  function onHealth(data) {
    if (!data || !data.environment_id) return;
    const environment = state.environments.find((e) => e.environment_id === data.environment_id);
    if (!environment) return;
    environment.last_health = data.health;
    renderEnvironments();
  }

  // ---------------------------------------------------------------- start

  function start() {
    $('sign-in-form').addEventListener('submit', async (event) => {
      event.preventDefault();
      const key = $('api-key').value.trim();
      if (!key) return;
      $('sign-in-button').disabled = true;
      await signIn(key);
      $('sign-in-button').disabled = false;
    });
    $('sign-out').addEventListener('click', () => signOut(''));
    $('trigger-form').addEventListener('submit', trigger);
    $('trigger-strategy').addEventListener('change', strategyChanged);
    strategyChanged();
    $('trigger-environments').addEventListener('change', formChanged);
    // Tags and the reason change what the warning says, not the windows: no read for them.
    for (const id of ['trigger-selector', 'trigger-override']) $(id).addEventListener('input', () => debounce('form', 200, renderWindowWarning));
    $('cancel-button').addEventListener('click', cancelActive);
    $('approve-button').addEventListener('click', () => decideGate('approve'));
    $('reject-button').addEventListener('click', () => decideGate('reject'));
    $('filter-status').addEventListener('change', historyFiltersChanged);
    $('filter-environment').addEventListener('change', historyFiltersChanged);
    $('history-filters').addEventListener('submit', (event) => event.preventDefault());
    $('audit-filters').addEventListener('submit', (event) => event.preventDefault());
    for (const id of ['audit-action', 'audit-actor']) {
      $(id).addEventListener('input', () => debounce('audit-filter', 300, loadAudit));
    }
    $('audit-outcome').addEventListener('change', loadAudit);
    $('history-next').addEventListener('click', historyOlder);
    $('history-prev').addEventListener('click', historyNewer);
    $('log-close').addEventListener('click', closeLog);
    $('log-dialog').addEventListener('close', () => { state.logDialogId = null; });
    $('log-dialog').addEventListener('click', (event) => {
      if (event.target === $('log-dialog')) closeLog();
    });

    let saved = null;
    try {
      saved = sessionStorage.getItem(KEY_STORAGE);
    } catch (_) {
      saved = null;
    }
    if (saved) {
      signIn(saved).then((ok) => {
        if (!ok) {
          try { sessionStorage.removeItem(KEY_STORAGE); } catch (_) { /* ignore */ }
          show($('sign-in'), true);
        }
      });
    } else {
      show($('sign-in'), true);
      $('api-key').focus();
    }
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start);
  else start();
})();
