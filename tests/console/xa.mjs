// Drives the console's XA view in a real headless Chromium: a viewer who is not logged in
// sees no XA view (and the API refuses both the list and a forced decision), and a
// logged-in operator finds the prepared XA branch with its age and the session waiting
// on its row lock, follows the xid to the transaction page, cancels a Force rollback
// (nothing happens), then forces the rollback.
//
// Started by tests/tests/t82_console_xa.rs, which prepared the branch through a real
// proxy and MariaDB and started the waiting UPDATE; it checks the database, the
// transaction and the audit log afterwards. Input: the JSON in REWIND_CONSOLE (see the
// `plan` there). Output: screenshots in its `artifacts` folder (xa.png: the waiting
// session; xa-forced.png: after the rollback) and one JSON line on
// stdout; any failed expectation throws, so the exit code is non-zero.

import { join } from "node:path";

import { expect, launch, login, newPage, plan, rowByHeader, until } from "./common.mjs";

/// The status codes of what a page could send by hand, without the console's help.
async function byHand(page) {
  return page.evaluate(async (xid) => {
    const list = await fetch("/api/v1/xa", { credentials: "same-origin" });
    const force = await fetch(`/api/v1/transactions/${encodeURIComponent(xid)}/force`, {
      method: "POST",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": "guessed" },
      credentials: "same-origin",
      body: JSON.stringify({ decision: "rollback" }),
    });
    return [list.status, force.status];
  }, plan.xid);
}

/// The transaction's status as the API says (with the page's session).
async function txStatus(page) {
  return page.evaluate(async (xid) => {
    const r = await fetch(`/api/v1/transactions/${encodeURIComponent(xid)}`, { credentials: "same-origin" });
    return (await r.json()).status;
  }, plan.xid);
}

async function main() {
  const browser = await launch();
  const errors = [];
  const report = {};
  try {
    // 1. A viewer who never logged in: the login form, no XA view, no Force button; the
    //    list and a hand-made forced rollback are refused (401).
    {
      const { ctx, page } = await newPage(browser, errors);
      await page.goto(plan.url);
      await page.getByTestId("login-submit").waitFor({ state: "visible" });
      expect(await page.locator("#nav").isHidden(), "viewer: no navigation before login");
      expect(await page.locator("#view-xa").isHidden(), "viewer: the XA view is hidden");
      expect(await page.getByTestId("force-rollback").count() === 0, "viewer: no Force button");
      report.viewer = await byHand(page);
      expect(report.viewer[0] === 401 && report.viewer[1] === 401, "viewer: by hand answers " + report.viewer);
      await ctx.close();
    }

    // 2. The operator finds the branch: age, status, the waiting session and its query.
    const { page } = await newPage(browser, errors);
    await login(page);
    await page.getByTestId("nav-xa").click();
    await page.locator("#view-xa").waitFor({ state: "visible" });
    const row = page.locator(`tr.xa-row[data-xid="${plan.xid}"]`);
    await row.waitFor();
    expect(await row.getAttribute("data-bqual") === plan.bqual, "the row's bqual");
    const waiter = row.locator(`li.xa-waiter[data-thread="${plan.thread_id}"]`);
    await until(page, "the waiting session is listed", () => waiter.count(), (n) => n === 1);
    const cells = await rowByHeader(page, "xa-table", row);
    report.row = cells;
    expect(cells["XID"] === plan.xid, "xid cell: " + cells["XID"]);
    expect(cells["Resource"] === plan.resource, "resource cell: " + cells["Resource"]);
    expect(cells["Status"] === "begin", "status cell: " + cells["Status"]);
    expect(/^\d+(\.\d)? (ms|s|min)$/.test(cells["Age"]), "age cell: " + cells["Age"]);
    const w = await waiter.textContent();
    expect(w.includes(`thread ${plan.thread_id}`), "waiter: " + w);
    expect(w.includes(plan.query_part), "waiter's query: " + w);
    expect(/waiting (< 1 s|\d)/.test(w), "waiter's wait: " + w);
    await page.screenshot({ path: join(plan.artifacts, "xa.png"), fullPage: true });

    // 3. The xid leads to the transaction page, with the XA branch.
    await row.getByTestId("xa-xid").click();
    await page.locator("#view-transactions").waitFor({ state: "visible" });
    await until(page, "the transaction page shows the XA branch",
      async () => (await page.getByTestId("tx-detail").textContent()) || "",
      (t) => t.includes(plan.xid) && t.includes(plan.bqual));
    await page.getByTestId("nav-xa").click();
    await row.waitFor();

    // 4. Force rollback, cancelled: nothing happens.
    await row.getByTestId("force-rollback").click();
    await page.getByTestId("confirm-dialog").waitFor({ state: "visible" });
    const question = await page.getByTestId("confirm-dialog").textContent();
    expect(question.includes(plan.xid) && /1 session\(s\) wait/.test(question), "the question: " + question);
    await page.getByTestId("confirm-cancel").click();
    await page.getByTestId("confirm-dialog").waitFor({ state: "hidden" });
    await page.waitForTimeout(500);
    expect(await txStatus(page) === "begin", "cancelled: still begin");
    expect(await page.locator("#xa-log li").count() === 0, "cancelled: nothing logged");

    // 5. Force rollback, confirmed: the row goes, the log says rolled back.
    await row.getByTestId("force-rollback").click();
    await page.getByTestId("confirm-ok").click();
    const logged = page.locator(`#xa-log li[data-xid="${plan.xid}"]`);
    await logged.waitFor();
    report.log = await logged.textContent();
    expect(await logged.evaluate((li) => li.classList.contains("result-ok")), "log entry is a success: " + report.log);
    expect(/force rollback — now rolled back/.test(report.log), "log: " + report.log);
    await row.waitFor({ state: "detached" });
    const b = page.locator("#banner");
    expect(await b.isHidden(), "no error banner: " + (await b.textContent()));
    await page.screenshot({ path: join(plan.artifacts, "xa-forced.png"), fullPage: true });

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
