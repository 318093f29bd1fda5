#!/usr/bin/env node
// Browser test of the operator dashboard (GET /), in Debian's headless Chromium driven by
// playwright-core. Run by tests/tests/dashboard.rs against a real host:
//
//   node tests/browser/dashboard.mjs <url> <admin key> <screenshot dir> [--scenario=main|plugin-missing|gate] [--user-key=KEY] [--deployment=ID]
//
// Every wait is bounded; the script exits 0 only when every check passed.

import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';

const CHROMIUM = '/usr/bin/chromium';
const WAIT = 20_000; // one UI condition
const DEPLOY_WAIT = 45_000; // a whole demo deployment
const WHOLE_RUN = 180_000; // the script, whatever happens

const [url, adminKey, screenshotDir, ...rest] = process.argv.slice(2);
if (!url || !adminKey || !screenshotDir) {
  console.error('usage: node dashboard.mjs <url> <admin key> <screenshot dir> [--scenario=main|plugin-missing|gate] [--user-key=KEY] [--deployment=ID]');
  process.exit(2);
}
const option = (name) => rest.find((arg) => arg.startsWith(`--${name}=`))?.slice(name.length + 3);
const scenario = option('scenario') ?? 'main';
const userKey = option('user-key');

const watchdog = setTimeout(() => {
  console.error(`FAIL: the browser test did not finish within ${WHOLE_RUN / 1000} s`);
  process.exit(1);
}, WHOLE_RUN);
watchdog.unref();

mkdirSync(screenshotDir, { recursive: true });
rmSync(path.join(screenshotDir, `${scenario}-FAILED.png`), { force: true });
const profile = mkdtempSync(path.join(tmpdir(), 'pa-dashboard-chromium-'));
const problems = []; // page errors, CSP violations, keys in URLs: reported at the end
const shots = [];

function step(text) {
  console.log(`-- ${text}`);
}

function check(condition, text) {
  if (!condition) throw new Error(`check failed: ${text}`);
  console.log(`   ok: ${text}`);
}

/** Whether `selector` reaches `state` on the page within WAIT. */
async function appears(page, selector, state = 'attached') {
  return page.waitForSelector(selector, { state, timeout: WAIT }).then(() => true, () => false);
}

/** Whether `condition(arg)` becomes true on the page within WAIT. */
async function holds(page, condition, arg) {
  return page.waitForFunction(condition, arg, { timeout: WAIT }).then(() => true, () => false);
}

/** A full-page screenshot from the top (a sticky header would else be drawn mid-page), or with
 * `{ fullPage: false }` what the viewport shows (a modal dialog). */
async function screenshot(page, name, { fullPage = true } = {}) {
  const file = path.join(screenshotDir, `${scenario}-${name}.png`);
  if (fullPage) await page.evaluate(() => window.scrollTo(0, 0));
  await page.screenshot({ path: file, fullPage });
  shots.push(file);
  console.log(`   screenshot: ${file}`);
}

/** A TCP relay between the browser and the host, so the test can cut the browser's open
 * connections (the live event stream among them) the way a network blip would. */
function startRelay(target) {
  const { hostname, port } = new URL(target);
  const sockets = new Set();
  const server = net.createServer((client) => {
    const upstream = net.connect(Number(port), hostname);
    for (const socket of [client, upstream]) {
      sockets.add(socket);
      socket.on('close', () => sockets.delete(socket));
      socket.on('error', () => { client.destroy(); upstream.destroy(); });
    }
    client.pipe(upstream);
    upstream.pipe(client);
  });
  return new Promise((resolve) => {
    server.listen(0, '127.0.0.1', () => resolve({
      url: `http://127.0.0.1:${server.address().port}`,
      cut() { for (const socket of sockets) socket.destroy(); },
      close() { this.cut(); server.close(); },
    }));
  });
}

const visible = (page, selector) => page.locator(selector).first().isVisible();
const text = async (page, selector) => (await page.locator(selector).first().textContent())?.trim() ?? '';

async function signIn(page, key) {
  await page.fill('#api-key', key);
  await page.click('#sign-in-button');
  await page.waitForSelector('#app', { state: 'visible', timeout: WAIT });
}

async function main(page, base, relay) {
  step('the page loads without a key and asks for one');
  const response = await page.goto(base, { waitUntil: 'domcontentloaded', timeout: WAIT });
  check(response?.status() === 200, `GET / answers 200 (got ${response?.status()})`);
  const headers = response.headers();
  check((headers['content-security-policy'] ?? '').includes("script-src 'self'"), 'a strict content-security-policy is sent');
  check(headers['x-content-type-options'] === 'nosniff', 'x-content-type-options: nosniff');
  await page.waitForSelector('#sign-in', { state: 'visible', timeout: WAIT });

  step('a bad key shows the API error');
  await page.fill('#api-key', 'pa_this_key_is_wrong');
  await page.click('#sign-in-button');
  await page.waitForSelector('#sign-in-error', { state: 'visible', timeout: WAIT });
  const refusal = await text(page, '#sign-in-error');
  check(/not valid/i.test(refusal), `the refusal is the API's message ("${refusal}")`);
  check(!(await visible(page, '#app')), 'the dashboard stays hidden');

  step('sign in with the admin key');
  await signIn(page, adminKey);
  await page.waitForSelector('#env-cards [data-environment="local_demo"]', { timeout: WAIT });
  await page.waitForFunction(() => document.getElementById('role-badge').textContent === 'admin', null, { timeout: WAIT });
  await page.waitForFunction(() => document.getElementById('live-status').dataset.state === 'live', null, { timeout: WAIT });
  await page.waitForSelector('#plugin-list [data-plugin="deployment_mcp"] .plugin-state:text-is("active")', { timeout: WAIT });
  check(!(await visible(page, '#plugin-banner')), 'no plugin banner while the plugin is active');
  const stored = await page.evaluate(() => sessionStorage.getItem('powerautomation.apiKey'));
  check(stored === adminKey, 'the key is kept in sessionStorage');
  check(!page.url().includes(adminKey), 'the key is not in the page URL');
  const card = await text(page, '#env-cards [data-environment="local_demo"]');
  check(/linux_local/.test(card) && /local/.test(card), `the local_demo card shows type and method ("${card.replace(/\s+/g, ' ').slice(0, 120)}")`);
  const sha = page.locator('#plugin-list [data-plugin="deployment_mcp"] .sha');
  const fullSha = await sha.getAttribute('title');
  check(/^[0-9a-f]{64}$/.test(fullSha ?? '') && (await sha.textContent()).length < 20, 'the plugin sha256 is shortened, full on hover');
  await screenshot(page, '01-signed-in');

  step('trigger a deployment of local_demo from the form, and watch it live');
  await page.evaluate(() => {
    window.__sameDocument = true;
    window.__phases = [];
    const phase = document.getElementById('active-phase');
    const record = () => {
      const seen = window.__phases;
      const now = `${document.getElementById('active-id').textContent} ${phase.textContent}`;
      if (seen[seen.length - 1] !== now) seen.push(now);
    };
    new MutationObserver(record).observe(phase, { childList: true, characterData: true, subtree: true });
  });
  for (const box of await page.locator('#trigger-environments input[type="checkbox"]').all()) {
    await box.setChecked(false);
  }
  await page.check('#trigger-environments input[value="local_demo"]');
  await page.fill('#trigger-version', '1.2.3-e2e');
  await page.click('#trigger-button');
  await page.waitForFunction(() => document.getElementById('trigger-message').dataset.deploymentId, null, { timeout: WAIT });
  const id = await page.locator('#trigger-message').getAttribute('data-deployment-id');
  check(/^dep-/.test(id ?? ''), `the form started deployment ${id}`);
  await page.waitForFunction(
    (want) => document.getElementById('active-id').textContent === want
      && document.getElementById('active-phase').dataset.status === 'completed'
      && document.getElementById('active-progress').getAttribute('aria-valuenow') === '100',
    id,
    { timeout: DEPLOY_WAIT },
  );
  const phases = (await page.evaluate(() => window.__phases)).filter((entry) => entry.startsWith(id)).map((entry) => entry.split(' ')[1]);
  console.log(`   phases seen: ${phases.join(' → ')}`);
  check(phases.some((phase) => phase !== 'completed'), 'the page showed the deployment running before it completed');
  const order = ['pending', 'ec2_deploying', 'ec2_completed', 'local_triggering', 'local_deploying', 'local_completed', 'verifying', 'completed'];
  check(phases.every((phase, i) => i === 0 || order.indexOf(phase) > order.indexOf(phases[i - 1])), 'never stepping back');
  check(phases[phases.length - 1] === 'completed', 'and then completed, with progress 100');
  check(await page.evaluate(() => window.__sameDocument === true), 'without reloading the page');
  check(
    await appears(page, '#active-results tr[data-environment="local_demo"] .env-status:text-is("succeeded")')
      && await holds(page, () => document.getElementById('active-log').textContent.includes('done')),
    'local_demo succeeded and its output is in the live log',
  );
  check(!(await visible(page, '#cancel-button')), 'no cancel button once it ended');
  // The rest of the page follows the events too: summary, environment card, history row.
  check(await holds(
    page,
    (want) => document.getElementById('stat-running').textContent === '0'
      && document.querySelector(`#history-rows tr[data-deployment-id="${want}"]`)?.dataset.status === 'completed'
      && /succeeded/.test(document.querySelector('#env-cards [data-environment="local_demo"]')?.textContent ?? ''),
    id,
  ), 'the summary, the environment card and the history row show it completed');
  const took = await text(page, `#history-rows tr[data-deployment-id="${id}"] td.duration`);
  check(/\d+(\.\d)? (ms|s)$/.test(took), `the history row tells how long it took ("${took}")`);
  // The bar animates its width: wait until it is drawn full.
  await page.waitForFunction(() => {
    const bar = document.getElementById('active-progress-bar').getBoundingClientRect().width;
    const track = document.getElementById('active-progress').getBoundingClientRect().width;
    return track > 0 && bar >= track - 1;
  }, null, { timeout: WAIT });
  await screenshot(page, '02-deployment-completed');

  step('find it in the history table; filters and the log');
  const row = `#history-rows tr[data-deployment-id="${id}"][data-status="completed"]`;
  await page.waitForSelector(row, { timeout: WAIT });
  await page.selectOption('#filter-status', 'failed');
  await page.waitForSelector(`#history-rows tr[data-deployment-id="${id}"]`, { state: 'detached', timeout: WAIT });
  await page.selectOption('#filter-status', 'completed');
  await page.selectOption('#filter-environment', 'local_demo');
  check(await appears(page, row), 'the status and environment filters narrow the table');
  await page.click(row);
  await page.waitForSelector('#log-dialog[open]', { timeout: WAIT });
  await page.waitForFunction(() => document.querySelectorAll('#log-lines .line').length > 0, null, { timeout: WAIT });
  const log = await text(page, '#log-lines');
  check(log.includes('done'), `the log shows the command's output (${await page.locator('#log-lines .line').count()} lines)`);
  check(/completed/.test(await text(page, '#log-meta')), 'the log header tells the status');
  await screenshot(page, '03-history-log', { fullPage: false });
  await page.click('#log-close');
  await page.waitForSelector('#log-dialog[open]', { state: 'detached', timeout: WAIT });

  step('phone width');
  await page.setViewportSize({ width: 390, height: 844 });
  await page.waitForFunction(() => getComputedStyle(document.querySelector('.grid')).gridTemplateColumns.split(' ').length === 1, null, { timeout: WAIT });
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  check(overflow <= 0, `nothing is wider than the screen (overflow ${overflow}px)`);
  await screenshot(page, '04-phone');
  await page.setViewportSize({ width: 1280, height: 900 });

  step('live updates come back by themselves, resuming from Last-Event-ID');
  const eventRequests = [];
  const onEvents = (request) => {
    if (new URL(request.url()).pathname.endsWith('/events')) eventRequests.push(request.headers());
  };
  page.on('request', onEvents);
  relay.cut();
  await page.waitForFunction(() => document.getElementById('live-status').dataset.state === 'down', null, { timeout: WAIT });
  await page.waitForFunction(() => document.getElementById('live-status').dataset.state === 'live', null, { timeout: WAIT });
  page.off('request', onEvents);
  const resumed = eventRequests.find((headers) => headers['last-event-id']);
  check(Boolean(resumed), `the stream reconnected with Last-Event-ID ${resumed?.['last-event-id']}`);
  check(eventRequests.every((headers) => headers['x-api-key'] === adminKey), 'and with the key as a header');

  step('cancel a running deployment of slow_demo');
  for (const box of await page.locator('#trigger-environments input[type="checkbox"]').all()) {
    await box.setChecked(false);
  }
  await page.check('#trigger-environments input[value="slow_demo"]');
  await page.fill('#trigger-version', '');
  await page.click('#trigger-button');
  await page.waitForFunction((before) => {
    const now = document.getElementById('trigger-message').dataset.deploymentId;
    return now && now !== before;
  }, id, { timeout: WAIT });
  const slow = await page.locator('#trigger-message').getAttribute('data-deployment-id');
  await page.waitForFunction(
    (want) => document.getElementById('active-id').textContent === want
      && document.getElementById('active-log').textContent.includes('waiting'),
    slow,
    { timeout: WAIT },
  );
  await page.selectOption('#filter-status', '');
  await page.selectOption('#filter-environment', '');
  const running = `#history-rows tr[data-deployment-id="${slow}"] td.duration`;
  check(
    await holds(page, (selector) => / so far$/.test(document.querySelector(selector)?.textContent ?? ''), running),
    `while it runs, its history row tells how long it has run ("${await page.locator(running).first().textContent({ timeout: 1000 }).catch(() => 'no row')}")`,
  );
  await page.waitForSelector('#cancel-button', { state: 'visible', timeout: WAIT });
  await page.click('#cancel-button');
  await page.waitForFunction(
    (want) => document.getElementById('active-id').textContent === want
      && document.getElementById('active-phase').dataset.status === 'cancelled',
    slow,
    { timeout: WAIT },
  );
  check(
    await appears(page, '#active-results tr[data-environment="slow_demo"] .env-status:text-is("cancelled")'),
    `deployment ${slow} is cancelled, and slow_demo with it`,
  );
  check(!(await visible(page, '#cancel-button')), 'the cancel button is gone');
  await page.selectOption('#filter-status', '');
  await page.selectOption('#filter-environment', '');
  await page.waitForSelector(`#history-rows tr[data-deployment-id="${slow}"][data-status="cancelled"]`, { timeout: WAIT });
  await page.waitForSelector(`#history-rows tr[data-deployment-id="${id}"][data-status="completed"]`, { timeout: WAIT });
  const listed = await page.locator('#history-rows tr').evaluateAll((rows) => rows.map((row) => row.dataset.deploymentId));
  check(listed.indexOf(slow) === 0 && listed.indexOf(id) === 1, `the history lists both, newest first (${listed.join(', ')})`);
  check(await holds(
    page,
    () => document.getElementById('stat-total').textContent === '2'
      && /cancelled/.test(document.querySelector('#env-cards [data-environment="slow_demo"]')?.textContent ?? ''),
  ), 'the summary and the slow_demo card follow');
  await screenshot(page, '05-cancelled');

  step('the audit log: the page\'s own calls, live, filtered');
  await page.waitForSelector('#audit', { state: 'visible', timeout: WAIT });
  check(await holds(
    page,
    () => [...document.querySelectorAll('#audit-rows tr')].some((row) => row.textContent.includes('deployment.cancel')
      && row.textContent.includes('dashboard') && row.textContent.includes('ops (admin)')),
  ), 'the cancel made on this page is in the audit log, through the dashboard, by ops');
  await page.selectOption('#audit-outcome', 'ok');
  await page.fill('#audit-action', 'deployment.trigger');
  check(await holds(
    page,
    () => {
      const rows = [...document.querySelectorAll('#audit-rows tr[data-seq]')];
      return rows.length >= 2 && rows.every((row) => row.textContent.includes('deployment.trigger'));
    },
  ), 'filtered to the triggers');
  await page.fill('#audit-action', '');
  await page.selectOption('#audit-outcome', '');
  await screenshot(page, '06-audit');

  step('the trigger form: rollout fields, a freeze shows before sending and refuses naming the window, an override reason passes; the calendar strip');
  const admin = { 'x-api-key': adminKey, 'content-type': 'application/json' };
  const release = await fetch(`${url}/api/deployment/schedules`, {
    method: 'POST',
    headers: admin,
    body: JSON.stringify({
      id: 'ui-release', at: new Date(Date.now() + 7_200_000).toISOString(),
      trigger: { environments: ['local_demo'] }, reason: 'weekly release',
    }),
  });
  check(release.status === 201, `a schedule for local_demo in two hours (${release.status})`);
  const freeze = await fetch(`${url}/api/deployment/windows`, {
    method: 'POST',
    headers: admin,
    body: JSON.stringify({
      id: 'ui-freeze', kind: 'deny', environments: ['local_demo'],
      start: new Date(Date.now() - 60_000).toISOString(), end: new Date(Date.now() + 3_600_000).toISOString(),
    }),
  });
  check(freeze.status === 201, `a freeze over local_demo (${freeze.status})`);
  for (const box of await page.locator('#trigger-environments input[type="checkbox"]').all()) {
    await box.setChecked(false);
  }
  await page.check('#trigger-environments input[value="local_demo"]');
  // Before anything is sent, the form says the freeze closes local_demo.
  check(
    await holds(page, () => document.getElementById('trigger-window').dataset.window === 'ui-freeze'),
    'the form shows the freeze before sending',
  );
  const warning = await text(page, '#trigger-window');
  check(/local_demo is closed by window ui-freeze until .*override reason/.test(warning), `and says until when and what it needs ("${warning}")`);
  const localRow = '#calendar-strip .cal-track[data-environment="local_demo"]';
  check(await appears(page, `${localRow} .cal-closed[data-window="ui-freeze"]`), 'the calendar strip shows the freeze on local_demo');
  check(await appears(page, `${localRow} .cal-run[data-schedule="ui-release"]`), 'and the schedule on local_demo');
  check(await visible(page, `${localRow} .cal-now`), 'and where now is');
  const scheduleNote = await text(page, '#calendar-notes li[data-schedule="ui-release"]');
  check(/ui-release: next .*1 environment \(weekly release\)/.test(scheduleNote), `the schedule in words ("${scheduleNote}")`);
  await page.locator('#calendar').scrollIntoViewIfNeeded();
  await screenshot(page, '08-calendar', { fullPage: false });
  await page.fill('#trigger-selector', 'tier=prod');
  await page.click('#trigger-button');
  check(/not both/.test(await text(page, '#trigger-message')), `environments and tags together are refused on the page ("${await text(page, '#trigger-message')}")`);
  await page.fill('#trigger-selector', '');
  await page.click('#trigger-rollout summary');
  await page.selectOption('#trigger-strategy', 'rolling');
  check((await visible(page, '#trigger-batch-size')) && !(await visible(page, '#trigger-canary')), 'rolling shows its batch size, not the canary fields');
  await page.fill('#trigger-batch-size', 'lots');
  await page.click('#trigger-button');
  check(/Batch size/.test(await text(page, '#trigger-message')), `a bad batch size names the field ("${await text(page, '#trigger-message')}")`);
  await page.fill('#trigger-batch-size', '1');
  await page.selectOption('#trigger-rollback', 'failed');
  await page.click('#trigger-button');
  await page.waitForFunction(() => document.getElementById('trigger-message').dataset.window === 'ui-freeze', null, { timeout: WAIT });
  check(/Closed by window ui-freeze: it opens/.test(await text(page, '#trigger-message')), `the refusal names the window and when it opens ("${await text(page, '#trigger-message')}")`);
  await screenshot(page, '07-window-closed');
  const beforeOverride = await page.locator('#trigger-message').getAttribute('data-deployment-id');
  await page.fill('#trigger-override', 'ui hotfix');
  await page.click('#trigger-button');
  await page.waitForFunction((before) => {
    const now = document.getElementById('trigger-message').dataset.deploymentId;
    return now && now !== before;
  }, beforeOverride, { timeout: WAIT });
  const overridden = await page.locator('#trigger-message').getAttribute('data-deployment-id');
  const record = await (await fetch(`${url}/api/deployment/deployments/${overridden}`, { headers: admin })).json();
  check(
    record.rollout?.strategy?.type === 'rolling' && record.rollout?.strategy?.batch_size === 1
      && record.rollout?.rollback === 'failed' && record.window_override?.reason === 'ui hotfix',
    `the deployment has the form's rollout and the override (${JSON.stringify(record.rollout)}, ${JSON.stringify(record.window_override)})`,
  );
  const removed = await fetch(`${url}/api/deployment/windows/ui-freeze`, { method: 'DELETE', headers: admin });
  check(removed.status === 200, 'the freeze is removed');
  const unscheduled = await fetch(`${url}/api/deployment/schedules/ui-release`, { method: 'DELETE', headers: admin });
  check(unscheduled.status === 200, 'the schedule is removed');
  await page.uncheck('#trigger-environments input[value="local_demo"]');
  await page.check('#trigger-environments input[value="local_demo"]');
  check(await holds(page, () => document.getElementById('trigger-window').hidden), 'the form no longer warns once the freeze is gone');
  check(await appears(page, '#calendar-strip .cal-closed', 'detached'), 'and the strip shows nothing closed');
  await page.waitForFunction(
    (want) => document.getElementById('active-id').textContent === want
      && document.getElementById('active-phase').dataset.status === 'completed',
    overridden,
    { timeout: DEPLOY_WAIT },
  );

  step('notifications: the card lists subscriptions, a test delivery and redelivers it');
  // Port 9 refuses connections: the delivery stays pending, with the error of its attempt.
  const hook = (id) => ({ id, events: ['deployment.failed'], channel: { type: 'webhook', url: 'http://127.0.0.1:9/x' } });
  const subscribed = await fetch(`${url}/api/deployment/subscriptions`, { method: 'POST', headers: admin, body: JSON.stringify(hook('ui-hook')) });
  check(subscribed.status === 201, `a subscription to a webhook (${subscribed.status})`);
  const tested = await fetch(`${url}/api/deployment/subscriptions?test=true`, { method: 'POST', headers: admin, body: JSON.stringify(hook('ui-hook-test')) });
  const testDelivery = tested.status === 201 ? (await tested.json()).test_delivery : undefined;
  check(Boolean(testDelivery), `another with a test delivery (${tested.status}, ${testDelivery})`);
  check(await appears(page, '#subscriptions-list .sub-row[data-subscription="ui-hook"]'), 'the card lists the subscription');
  await page.click('#subscriptions-list .sub-row[data-subscription="ui-hook-test"]');
  check(
    await appears(page, `#deliveries-list .delivery-row[data-delivery="${testDelivery}"][data-state="pending"]`),
    'choosing the other lists its test delivery, pending',
  );
  await page.click(`#deliveries-list button.redeliver[data-delivery="${testDelivery}"]`);
  check(
    await holds(page, () => /queued/.test(document.getElementById('redeliver-message').textContent)),
    `Redeliver queues it again ("${await text(page, '#redeliver-message')}")`,
  );
  await page.locator('#subscriptions-card').scrollIntoViewIfNeeded();
  await screenshot(page, '09-notifications', { fullPage: false });
  for (const id of ['ui-hook', 'ui-hook-test']) {
    const unsubscribed = await fetch(`${url}/api/deployment/subscriptions/${id}`, { method: 'DELETE', headers: admin });
    check(unsubscribed.status === 200, `subscription ${id} is removed`);
  }

  step('sign out');
  await page.click('#sign-out');
  await page.waitForSelector('#sign-in', { state: 'visible', timeout: WAIT });
  check(await page.evaluate(() => sessionStorage.getItem('powerautomation.apiKey') === null), 'the key is forgotten');

  if (userKey) {
    step('a user key: no admin controls, and the page still works');
    await signIn(page, userKey);
    await page.waitForFunction(() => document.getElementById('role-badge').textContent === 'user', null, { timeout: WAIT });
    await page.waitForSelector('#env-cards [data-environment="local_demo"]', { timeout: WAIT });
    await page.waitForSelector('#history-message', { state: 'visible', timeout: WAIT });
    check(/developer/.test(await text(page, '#history-message')), 'the history says which role it needs');
    check(
      await holds(page, () => /developer/.test(document.getElementById('calendar-message').textContent)),
      'so does the calendar',
    );
    check(!(await visible(page, '#trigger')), 'no trigger form');
    check(!(await visible(page, '#cancel-button')), 'no cancel button');
    check(!(await visible(page, '#plugin-list .reload')), 'no reload button');
    check(!(await visible(page, '#audit')), 'no audit log');
    check(!(await visible(page, '#subscriptions-card')), 'no notifications card');
    check(await visible(page, '#plugin-list [data-plugin="deployment_mcp"]'), 'the plugin panel renders');
    check(!(await visible(page, '#history .table-wrap')), 'the history table makes way for the message');
    check(
      await appears(page, '#active-results tr[data-environment="local_demo"] .env-status:text-is("succeeded")'),
      'the latest deployment (the override) shows local_demo succeeded (from /status?id=)',
    );
    check(
      await holds(page, () => document.getElementById('live-status').dataset.state === 'live'),
      'live updates are connected',
    );
    await screenshot(page, '06-user-key');
  }
}

async function pluginMissing(page, base) {
  step('the host has no plugin file: a banner, and the plugin panel still works');
  await page.goto(base, { waitUntil: 'domcontentloaded', timeout: WAIT });
  await page.waitForSelector('#sign-in', { state: 'visible', timeout: WAIT });
  await signIn(page, adminKey);
  await page.waitForSelector('#plugin-banner', { state: 'visible', timeout: WAIT });
  const reason = await text(page, '#plugin-banner');
  check(/missing/i.test(reason), `the banner tells why ("${reason.replace(/\s+/g, ' ')}")`);
  check(
    await appears(page, '#plugin-list [data-plugin="deployment_mcp"] .plugin-state:text-is("missing")'),
    'the plugin panel shows the plugin as missing',
  );
  check(await visible(page, '#plugin-list .last-error'), 'with its last error');
  check(await visible(page, '#plugin-list .reload'), 'and a reload button for the admin');
  check(!(await visible(page, '#trigger')) && !(await visible(page, '#history')), 'the deployment panels are hidden');
  await screenshot(page, '01-banner');
  await page.click('#plugin-list .reload');
  await page.waitForSelector('#plugin-message.error', { state: 'visible', timeout: WAIT });
  check(/./.test(await text(page, '#plugin-message')), `a failed reload says why ("${await text(page, '#plugin-message')}")`);
  check(await visible(page, '#plugin-banner'), 'the banner stays');
  await page.setViewportSize({ width: 390, height: 844 });
  await screenshot(page, '02-phone');
}

async function gate(page, base) {
  const id = option('deployment');
  step('a deployment waits at its canary gate: a banner with Approve and Reject, and its batches');
  await page.goto(base, { waitUntil: 'domcontentloaded', timeout: WAIT });
  await page.waitForSelector('#sign-in', { state: 'visible', timeout: WAIT });
  await signIn(page, adminKey);
  await page.waitForFunction((wanted) => document.getElementById('active-id').textContent === wanted, id, { timeout: WAIT });
  await page.waitForSelector('#gate-banner', { state: 'visible', timeout: WAIT });
  check(/waits for approval/.test(await text(page, '#gate-text')), `the banner says what it waits for ("${await text(page, '#gate-text')}")`);
  check(/Who may approve: any admin\./.test(await text(page, '#gate-text')), 'and who may approve it');
  check((await visible(page, '#approve-button')) && (await visible(page, '#reject-button')), 'Approve and Reject are offered to the admin');
  check(await text(page, '#active-phase') === 'awaiting_approval', 'the phase is awaiting_approval');
  await page.waitForSelector('#active-batches li[data-batch="2"]', { timeout: WAIT });
  const canary = await page.locator('#active-batches li[data-batch="1"]').getAttribute('data-status');
  const rest = await page.locator('#active-batches li[data-batch="2"]').getAttribute('data-status');
  check(canary === 'succeeded' && rest === 'pending', `the canary batch succeeded, the next waits (${canary}, ${rest})`);
  await screenshot(page, '01-waiting');

  step('approve by clicking: the rollout goes on to the end');
  await page.click('#approve-button');
  await page.waitForFunction(() => document.getElementById('active-phase').textContent === 'completed', null, { timeout: WAIT });
  check(!(await visible(page, '#gate-banner')), 'the banner is gone');
  check(/Approved/.test(await text(page, '#gate-message')), `the page confirms ("${await text(page, '#gate-message')}")`);
  check(
    await holds(page, () => document.querySelector('#active-batches li[data-batch="2"]')?.dataset.status === 'succeeded'),
    'the second batch succeeded',
  );
  check(
    await appears(page, '#env-cards [data-environment="gate_b"] code:text-is("v-gate")'),
    'the environment card shows the deployed version',
  );
  await screenshot(page, '02-approved');
}

async function run() {
  const relay = await startRelay(url);
  const base = relay.url;
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      // Chromium looks up Google's hosts on its own (autofill, updates, accounts); the test may
      // talk to this machine only: no name resolves, and the services that ask are off.
      '--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1',
      '--disable-features=AutofillServerCommunication,OptimizationHints,Translate,MediaRouter,CertificateTransparencyComponentUpdater',
      '--disable-client-side-phishing-detection',
      '--disable-default-apps',
      '--disable-domain-reliability',
      '--disable-breakpad',
      '--no-pings',
    ],
    viewport: { width: 1280, height: 900 },
    deviceScaleFactor: 1,
  });
  const page = context.pages()[0] ?? (await context.newPage());
  page.setDefaultTimeout(WAIT);
  page.on('pageerror', (error) => problems.push(`page error: ${error.message}`));
  page.on('console', (msg) => {
    const line = msg.text();
    if (msg.type() === 'error' && !line.startsWith('Failed to load resource')) problems.push(`console error: ${line}`);
    if (/Content Security Policy|Refused to/.test(line)) problems.push(`CSP: ${line}`);
  });
  page.on('request', (request) => {
    const keys = [adminKey, userKey].filter(Boolean);
    if (keys.some((key) => request.url().includes(key))) problems.push(`a key in a URL: ${request.url()}`);
    const target = new URL(request.url());
    if (target.origin !== new URL(base).origin) problems.push(`a request off the host: ${request.url()}`);
    if (target.pathname.startsWith('/api/') && !request.headers()['x-api-key']) problems.push(`an API call without X-API-Key: ${request.url()}`);
  });
  try {
    if (scenario === 'main') await main(page, base, relay);
    else if (scenario === 'plugin-missing') await pluginMissing(page, base);
    else if (scenario === 'gate') await gate(page, base);
    else throw new Error(`unknown scenario ${scenario}`);
    if (problems.length) throw new Error(`the page misbehaved:\n  ${problems.join('\n  ')}`);
  } catch (error) {
    try {
      await screenshot(page, 'FAILED');
      console.error(`page text at the failure:\n${(await page.locator('body').innerText()).slice(0, 4000)}`);
    } catch (_) { /* the page may be gone */ }
    throw error;
  } finally {
    await context.close();
    relay.close();
  }
}

try {
  await run();
  console.log(`PASS (${scenario}); screenshots:\n  ${shots.join('\n  ')}`);
  rmSync(profile, { recursive: true, force: true });
  process.exit(0);
} catch (error) {
  console.error(`FAIL (${scenario}): ${error.stack || error}`);
  if (problems.length) console.error(`also:\n  ${problems.join('\n  ')}`);
  rmSync(profile, { recursive: true, force: true });
  process.exit(1);
}
