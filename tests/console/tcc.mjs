// Drives the console's transaction detail for a global transaction with one AT and two
// TCC branches in a real headless Chromium: each branch shows its type; the TCC branch
// whose Confirm keeps failing is `stalled` with its last error and the operator's two
// actions; the operator calls its Confirm again (after confirming in the dialog) and
// the transaction ends committed.
//
// Started by tests/tests/t28_tcc.rs (t28_the_console_shows_branch_types_and_an_operator_
// retries_a_stalled_one), which checks the database and the audit log afterwards.
// Input: REWIND_CONSOLE (url, secret, chromium, artifacts, xid, stalled, branches).
// Output: a screenshot and one JSON line on stdout; a failed expectation throws.

import { join } from "node:path";

import { TIMEOUT, expect, launch, plan } from "./common.mjs";

async function main() {
  const browser = await launch();
  const errors = [];
  const report = {};
  try {
    const ctx = await browser.newContext({ viewport: { width: 1366, height: 900 } });
    const page = await ctx.newPage();
    page.setDefaultTimeout(TIMEOUT);
    page.on("pageerror", (e) => errors.push(String(e)));
    await page.goto(plan.url);
    await page.getByTestId("login-name").fill("admin");
    await page.getByTestId("login-secret").fill(plan.secret);
    await page.getByTestId("login-submit").click();
    await page.getByTestId("operator").waitFor({ state: "visible" });

    await page.locator(`#tx-rows tr[data-xid="${plan.xid}"]`).click();
    await page.getByTestId("tx-timeline").waitFor();
    const row = (id) => page.locator(`[data-testid="branch"][data-branch="${id}"]`);
    for (const b of plan.branches) {
      await row(b.branch_id).waitFor();
      const type = await row(b.branch_id).getAttribute("data-type");
      expect(type === b.type, `branch ${b.branch_id}: type ${type}, want ${b.type}`);
      const text = await row(b.branch_id).textContent();
      expect(text.includes(b.type.toUpperCase()), `branch ${b.branch_id} shows its type: ${text}`);
    }
    const stalled = row(plan.stalled);
    const text = await stalled.textContent();
    report.stalled = text;
    expect(/stalled/.test(text), "the failing branch is stalled: " + text);
    expect(/503/.test(text), "with its last error: " + text);
    // Only the stalled TCC branch offers the operator's actions.
    expect(await page.getByTestId("branch-retry").count() === 1, "one retry button");
    expect(await stalled.getByTestId("branch-mark_done").count() === 1, "mark done on the stalled branch");
    await stalled.locator("details summary").click();
    const calls = await stalled.locator("details").textContent();
    expect(calls.includes(plan.confirm_url), "its confirm URL: " + calls);
    await page.screenshot({ path: join(plan.artifacts, "tcc-stalled.png"), fullPage: true });

    // Cancelling the dialog does nothing; confirming it calls the Confirm again.
    await stalled.getByTestId("branch-retry").click();
    await page.locator("#confirm").waitFor({ state: "visible" });
    await page.keyboard.press("Escape");
    await stalled.getByTestId("branch-retry").click();
    await page.getByTestId("confirm-ok").click();
    const end = Date.now() + TIMEOUT;
    for (;;) {
      const t = await page.getByTestId("tx-detail").textContent();
      if (/committed/.test(await page.locator("#tx-detail h2").textContent())) break;
      if (Date.now() > end) throw new Error("console expectation failed: the transaction ends committed: " + t);
      await page.waitForTimeout(200);
      await page.locator(`#tx-rows tr[data-xid="${plan.xid}"]`).click().catch(() => {});
    }
    expect(await page.getByTestId("branch-retry").count() === 0, "no action left once committed");
    const b = page.locator("#banner");
    expect(await b.isHidden(), "no error banner: " + (await b.textContent()));
    await page.screenshot({ path: join(plan.artifacts, "tcc-committed.png"), fullPage: true });
    expect(errors.length === 0, "no script errors: " + errors.join("; "));
    report.ok = true;
    process.stdout.write(JSON.stringify(report) + "\n");
  } finally {
    await browser.close();
  }
}

main().catch((e) => {
  process.stderr.write(String(e && e.stack ? e.stack : e) + "\n");
  process.exit(1);
});
