// Drives the coordinator's admin console in a real headless Chromium, as an operator
// would: a wrong secret is refused, then log in, find each conflict, read its three
// images, resolve it through the confirmation dialog, and read the audit log.
//
// Started by tests/tests/t80_console.rs, which made the conflicts through a real proxy
// and MariaDB and checks the database and the audit API afterwards. Input: the JSON in
// REWIND_CONSOLE (see `Plan` there). Output: screenshots in its `artifacts` folder and
// one JSON line on stdout; any failed expectation throws, so the exit code is non-zero.

import { join } from "node:path";

import { TIMEOUT, expect, launch, plan } from "./common.mjs";

async function shot(page, name) {
  const path = join(plan.artifacts, name + ".png");
  await page.screenshot({ path, fullPage: true });
  return path;
}

/// The text of the cells of one column of a conflict's image table, by column name.
async function imageRow(card, column) {
  const row = card.locator('[data-testid="cf-images"] tbody tr').filter({
    has: card.page().locator("th", { hasText: new RegExp("^" + column + "$") }),
  });
  const cells = await row.locator("td").allTextContents();
  const classes = await row.locator("td").evaluateAll((tds) => tds.map((td) => td.className));
  return { cells, classes };
}

async function main() {
  const browser = await launch();
  const shots = [];
  try {
    const ctx = await browser.newContext({ viewport: { width: 1366, height: 800 } });
    const page = await ctx.newPage();
    page.setDefaultTimeout(TIMEOUT);
    const pageErrors = [];
    page.on("pageerror", (e) => pageErrors.push(String(e)));

    // 1. A wrong credential is refused, and says so.
    await page.goto(plan.url);
    await page.getByTestId("login-name").fill("admin");
    await page.getByTestId("login-secret").fill(plan.secret + "-wrong");
    await page.getByTestId("login-submit").click();
    await page.getByTestId("login-error").waitFor({ state: "visible" });
    const refused = await page.getByTestId("login-error").textContent();
    expect(/wrong operator name or secret/i.test(refused), "login refusal text: " + refused);
    expect(await page.locator("#nav").isHidden(), "nothing shown before login");
    shots.push(await shot(page, "01-login-refused"));

    // 2. Log in; the transaction list shows the conflicted transactions.
    await page.getByTestId("login-secret").fill(plan.secret);
    await page.getByTestId("login-submit").click();
    await page.getByTestId("operator").waitFor({ state: "visible" });
    expect((await page.getByTestId("operator").textContent()) === "admin", "logged in as admin");
    const all = Object.values(plan.conflicts);
    for (const c of all) {
      await page.locator(`#tx-rows tr[data-xid="${c.xid}"]`).waitFor();
    }
    // Filter by status, then open one transaction's detail.
    await page.getByTestId("tx-status").selectOption("rollback_failed");
    const first = all[0];
    await page.locator(`#tx-rows tr[data-xid="${first.xid}"]`).click();
    await page.getByTestId("tx-timeline").waitFor();
    const timeline = await page.getByTestId("tx-timeline").textContent();
    expect(/begin/.test(timeline) && /rollback failed/.test(timeline), "timeline: " + timeline);
    const detail = await page.getByTestId("tx-detail").textContent();
    expect(detail.includes(first.resource_id), "branch resource in the detail");
    shots.push(await shot(page, "02-transactions"));

    // 3. Conflicts: every one is listed with its three images, the dirty cell marked.
    await page.getByTestId("nav-conflicts").click();
    for (const c of all) {
      const card = page.locator(`[data-testid="conflict"][data-id="${c.id}"]`);
      await card.waitFor();
      const { cells, classes } = await imageRow(card, c.column);
      expect(
        JSON.stringify(cells) === JSON.stringify([c.before, c.after, c.current]),
        `conflict ${c.id} ${c.column}: before/after/current ${JSON.stringify(cells)}, want ${JSON.stringify([c.before, c.after, c.current])}`,
      );
      expect(/\bdirty\b/.test(classes[2]), `conflict ${c.id}: current cell highlighted (${classes})`);
      expect(/\bchg\b/.test(classes[1]), `conflict ${c.id}: after cell highlighted (${classes})`);
    }
    shots.push(await shot(page, "03-conflicts"));

    // 4. Resolve each with its action, through the confirmation that explains it.
    const outcome = {};
    for (const [name, c] of Object.entries(plan.conflicts)) {
      const card = page.locator(`[data-testid="conflict"][data-id="${c.id}"]`);
      await card.getByTestId("action-" + c.action).click();
      const dialog = page.getByTestId("confirm-dialog");
      await dialog.waitFor({ state: "visible" });
      const explained = await dialog.textContent();
      expect(explained.includes(c.xid), `${name}: the dialog names the transaction`);
      if (name === "retry") {
        // Cancelling does nothing.
        await page.getByTestId("confirm-cancel").click();
        await dialog.waitFor({ state: "hidden" });
        expect(await card.isVisible(), "cancel keeps the conflict open");
        await card.getByTestId("action-" + c.action).click();
        await dialog.waitFor({ state: "visible" });
      }
      if (name === "stale") shots.push(await shot(page, "04-confirm-restore"));
      await page.getByTestId("confirm-ok").click();
      await dialog.waitFor({ state: "hidden" });
      if (c.expect === "refused") {
        // The row changed again: refused, shown, still open.
        await card.getByTestId("cf-error").waitFor();
        outcome[name] = await card.getByTestId("cf-error").textContent();
        expect(/refused/i.test(outcome[name]), `${name}: ${outcome[name]}`);
        shots.push(await shot(page, "05-refused"));
      } else {
        await card.waitFor({ state: "detached" });
        outcome[name] = "resolved";
      }
    }

    // Settled conflicts are still there for the record.
    await page.getByTestId("cf-all").check();
    for (const c of all) {
      await page.locator(`[data-testid="conflict"][data-id="${c.id}"]`).waitFor();
    }

    // 5. The audit log shows every action, who did it and its result.
    await page.getByTestId("nav-audit").click();
    await page.locator("#audit-rows tr").first().waitFor();
    const want = Object.values(plan.conflicts).map((c) => "resolve " + c.action);
    let rows = [];
    for (let i = 0; i < 50; i++) {
      rows = await page.locator("#audit-rows tr").evaluateAll((trs) =>
        trs.map((tr) => [...tr.querySelectorAll("td")].map((td) => td.textContent)));
      if (want.every((w) => rows.some((r) => r[3] === w))) break;
      await page.waitForTimeout(200);
    }
    for (const w of want) {
      expect(rows.some((r) => r[2] === "admin" && r[3] === w), `audit row for ${w}: ${JSON.stringify(rows)}`);
    }
    expect(rows.some((r) => r[3] === "login" && r[5] === "ok"), "audit row for the login");
    shots.push(await shot(page, "06-audit"));

    // 6. Logging out locks the console again.
    await page.getByTestId("logout").click();
    await page.getByTestId("login-submit").waitFor({ state: "visible" });
    await page.reload();
    await page.getByTestId("login-submit").waitFor({ state: "visible" });

    expect(pageErrors.length === 0, "no script errors: " + pageErrors.join("; "));
    process.stdout.write(JSON.stringify({ ok: true, outcome, audit: rows, screenshots: shots }) + "\n");
  } finally {
    await browser.close();
  }
}

main().catch((e) => {
  process.stderr.write(String(e && e.stack ? e.stack : e) + "\n");
  process.exit(1);
});
