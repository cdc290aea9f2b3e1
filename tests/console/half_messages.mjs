// Drives the console's Half messages view in a real headless Chromium: a viewer who is not
// logged in sees no view (and the API refuses a hand-made commit or redrive); a logged-in
// operator pages the list, filters it by status, reads message A's whole life, finds C and
// D in the undecided queue, cancels a Commit (nothing happens), commits C and drops D
// through their dialogs, follows the message branch E to its global transaction and back,
// redrives the dead message F, and reads the audit log.
//
// Started by tests/tests/t84_console_half_messages.rs, which made the messages through the
// HTTP API and checks the API, the broker and the audit log afterwards. Input: the JSON in
// REWIND_CONSOLE (see the `plan` there). Output: screenshots in its `artifacts` folder
// (half-messages-a.png: A's page; half-messages.png: the view after the decisions) and one
// JSON line on stdout; any failed expectation throws, so the exit code is non-zero.

import { join } from "node:path";

import { expect, launch, login, newPage, plan, rowByHeader, until } from "./common.mjs";

const ids = plan.ids;
const listRow = (page, id) => page.locator(`#hm-rows tr.hm-row[data-message-id="${id}"]`);
const undecidedRow = (page, id) => page.locator(`tr.hm-undecided-row[data-message-id="${id}"]`);
const listedIds = (page) => page.locator("#hm-rows tr.hm-row").evaluateAll((rs) => rs.map((r) => r.dataset.messageId));

/// The status codes of what a page could send by hand, without the console's help.
async function byHand(page) {
  return page.evaluate(async ([c, f]) => {
    const post = (path, body) => fetch(path, {
      method: "POST",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": "guessed" },
      credentials: "same-origin",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const force = await post(`/api/v1/messages/${c}/force`, { decision: "commit" });
    const redrive = await post(`/api/v1/messages/${f}/redrive`);
    return [force.status, redrive.status];
  }, [ids.c, ids.f]);
}

/// A message as the API says (with the page's session).
async function apiMessage(page, id) {
  return page.evaluate(async (id) => {
    const r = await fetch(`/api/v1/messages/${id}`, { credentials: "same-origin" });
    return r.json();
  }, id);
}

/// The open message page's timeline: [{event, at, when, detail}] in order.
async function timeline(page) {
  return page.locator('[data-testid="hm-timeline"] li.hm-event').evaluateAll((lis) => lis.map((li) => ({
    event: li.dataset.event,
    at: Number(li.dataset.at),
    when: (li.querySelector(".hm-when") || {}).textContent || "",
    detail: (li.querySelector(".hm-detail") || {}).textContent || "",
  })));
}

async function field(page, key) {
  return ((await page.locator(`[data-testid="hm-fields"] dd[data-field="${key}"]`).textContent()) || "").trim();
}

async function openFromList(page, id) {
  await listRow(page, id).click();
  await page.getByTestId("hm-page").waitFor({ state: "visible" });
  await until(page, "the page of " + id, () => page.getByTestId("hm-id").textContent().catch(() => ""), (t) => t === id);
}

async function backToList(page) {
  await page.getByTestId("hm-back").click();
  await page.locator("#hm-list-part").waitFor({ state: "visible" });
}

async function filter(page, status) {
  await page.getByTestId("hm-status").selectOption(status);
  // Every row shown has that status (and the list is not the previous one).
  return until(page, "the list filtered by " + (status || "all"), async () => {
    const st = await page.locator("#hm-rows tr.hm-row").evaluateAll((rs) => rs.map((r) => r.dataset.status));
    return { st, ids: await listedIds(page) };
  }, (x) => (status === "" ? x.st.length === 50 : x.st.length > 0 && x.st.every((s) => s === status)));
}

async function main() {
  const browser = await launch();
  const errors = [];
  const report = {};
  try {
    // 1. A viewer who never logged in: the login form, no view, no buttons; a hand-made
    //    commit and redrive are refused (401).
    {
      const { ctx, page } = await newPage(browser, errors);
      await page.goto(plan.url);
      await page.getByTestId("login-submit").waitFor({ state: "visible" });
      expect(await page.locator("#nav").isHidden(), "viewer: no navigation before login");
      expect(await page.locator("#view-half-messages").isHidden(), "viewer: the view is hidden");
      report.viewer = await byHand(page);
      expect(report.viewer[0] === 401 && report.viewer[1] === 401, "viewer: by hand answers " + report.viewer);
      await ctx.close();
    }

    // 2. The operator opens the view: the badge counts the undecided, the list pages.
    const { page } = await newPage(browser, errors);
    await login(page);
    await until(page, "the badge counts 2 undecided", () => page.locator("#undecided-count").textContent(), (t) => t === "2");
    await page.getByTestId("nav-half-messages").click();
    await page.locator("#view-half-messages").waitFor({ state: "visible" });
    await listRow(page, ids.f).waitFor();
    const first = await until(page, "a full first page", () => listedIds(page), (l) => l.length === 50);
    expect(first[0] === ids.f, "newest first: " + first[0]);
    expect(!(await page.getByTestId("hm-older").isDisabled()), "Older is enabled");
    expect(await page.getByTestId("hm-newer").isDisabled(), "Newer is disabled on the first page");
    await page.getByTestId("hm-older").click();
    const second = await until(page, "the second page", () => listedIds(page), (l) => l.length > 0 && !l.includes(ids.f));
    const all = new Set([...first, ...second]);
    report.pages = [first.length, second.length];
    expect(first.length + second.length === plan.total && all.size === plan.total,
      `two pages hold all ${plan.total} messages once each: ${first.length} + ${second.length}, ${all.size} distinct`);
    expect(await page.getByTestId("hm-older").isDisabled(), "Older is disabled on the last page");
    await page.getByTestId("hm-newer").click();
    await until(page, "back on the first page", () => listedIds(page), (l) => l[0] === ids.f);

    // 3. Filters, one per status.
    const sent = await filter(page, "sent");
    expect(JSON.stringify(sent.ids) === JSON.stringify([ids.a]), "sent: " + sent.ids);
    const cancelled = await filter(page, "cancelled");
    expect(cancelled.ids.includes(ids.b) && !cancelled.ids.includes(ids.a), "cancelled: B, not A");
    const undecided = await filter(page, "undecided");
    expect(undecided.ids.length === 2 && undecided.ids.includes(ids.c) && undecided.ids.includes(ids.d), "undecided: " + undecided.ids);
    const dead = await filter(page, "dead");
    expect(JSON.stringify(dead.ids) === JSON.stringify([ids.f]), "dead: " + dead.ids);
    const prepared = await filter(page, "prepared");
    expect(JSON.stringify(prepared.ids) === JSON.stringify([ids.e]), "prepared: " + prepared.ids);
    await filter(page, "");
    const rowA = await rowByHeader(page, "hm-table", listRow(page, ids.a));
    report.row_a = rowA;
    expect(rowA["Status"] === "sent" && rowA["Topic"] === plan.topic && rowA["Resource"] === "—" && rowA["Checks"] === "0",
      "A's row: " + JSON.stringify(rowA));

    // 4. A's whole life on one page.
    await openFromList(page, ids.a);
    const lifeA = await timeline(page);
    report.life_a = lifeA;
    expect(JSON.stringify(lifeA.map((e) => e.event)) === JSON.stringify(["prepared", "confirmed", "sent"]),
      "A's timeline: " + lifeA.map((e) => e.event));
    expect(lifeA.every((e) => /\d{2}:\d{2}:\d{2}\.\d{3}/.test(e.when)), "every event has its time: " + lifeA.map((e) => e.when));
    expect(lifeA.every((e, i) => i === 0 || e.at >= lifeA[i - 1].at), "events in time order");
    expect(lifeA[1].detail === "by application", "confirmed by the application: " + lifeA[1].detail);
    expect(await field(page, "topic") === plan.topic, "topic field");
    expect(await field(page, "key") === "order-1", "key field");
    expect(await field(page, "status") === "sent", "status field");
    expect(/^0 that decided nothing$/.test(await field(page, "checks")), "checks field: " + await field(page, "checks"));
    expect(await field(page, "publish_failures") === "0", "publish failures field");
    expect(await field(page, "last_error") === "—", "no last error");
    expect(/none/.test(await field(page, "xid")), "no global transaction");
    expect(await page.getByTestId("hm-payload").textContent() === plan.payload_a, "the payload as published");
    const headers = await page.getByTestId("hm-headers").textContent();
    expect(headers.includes("origin") && headers.includes("t84"), "headers: " + headers);
    const onPage = page.getByTestId("hm-page");
    expect(await onPage.getByTestId("hm-commit").count() === 0 && await onPage.getByTestId("hm-redrive").count() === 0,
      "a sent message offers no action");
    await page.screenshot({ path: join(plan.artifacts, "half-messages-a.png"), fullPage: true });
    await backToList(page);

    // 5. The undecided queue: C and D, their age, resource, checks and last error.
    for (const id of [ids.c, ids.d]) {
      const r = await rowByHeader(page, "hm-undecided-table", undecidedRow(page, id));
      expect(r["Resource"].startsWith(plan.resource), `${id}: resource ${r["Resource"]}`);
      expect(Number(r["Checks"]) >= 2, `${id}: checks ${r["Checks"]}`);
      expect(/no proxy attached/.test(r["Last error"]), `${id}: last error ${r["Last error"]}`);
      expect(/^\d+(\.\d)? (ms|s|min)$/.test(r["Age"]), `${id}: age ${r["Age"]}`);
    }
    expect(await page.locator("tr.hm-undecided-row").count() === 2, "two undecided rows");

    // 6. Commit C: the dialog says what it does; cancelled first, nothing happens.
    await undecidedRow(page, ids.c).getByTestId("hm-commit").click();
    await page.getByTestId("confirm-dialog").waitFor({ state: "visible" });
    const commitText = await page.getByTestId("confirm-dialog").textContent();
    report.commit_dialog = commitText;
    expect(commitText.includes(ids.c) && /published to its consumers/.test(commitText) &&
      /check-back could not confirm/.test(commitText) && commitText.includes(plan.resource),
      "the commit question: " + commitText);
    await page.getByTestId("confirm-cancel").click();
    await page.getByTestId("confirm-dialog").waitFor({ state: "hidden" });
    await page.waitForTimeout(500);
    expect((await apiMessage(page, ids.c)).status === "undecided", "cancelled: C still undecided");
    expect(await page.locator("#hm-log li").count() === 0, "cancelled: nothing logged");
    await undecidedRow(page, ids.c).getByTestId("hm-commit").click();
    await page.getByTestId("confirm-ok").click();
    const loggedC = page.locator(`#hm-log li[data-message-id="${ids.c}"]`);
    await loggedC.waitFor();
    report.log_c = await loggedC.textContent();
    expect(/commit — now confirmed/.test(report.log_c), "log: " + report.log_c);
    expect(await loggedC.evaluate((li) => li.classList.contains("result-ok")), "the commit is a success");
    await undecidedRow(page, ids.c).waitFor({ state: "detached" });
    await until(page, "C is sent", async () => (await listRow(page, ids.c).getAttribute("data-status")) || "", (s) => s === "sent");

    // 7. Drop D: the dialog says it is never sent and consumers never hear of it.
    await undecidedRow(page, ids.d).getByTestId("hm-drop").click();
    await page.getByTestId("confirm-dialog").waitFor({ state: "visible" });
    const dropText = await page.getByTestId("confirm-dialog").textContent();
    report.drop_dialog = dropText;
    expect(dropText.includes(ids.d) && /cancelled and never sent/.test(dropText) &&
      /consumers will never hear of it/.test(dropText), "the drop question: " + dropText);
    await page.getByTestId("confirm-ok").click();
    const loggedD = page.locator(`#hm-log li[data-message-id="${ids.d}"]`);
    await loggedD.waitFor();
    report.log_d = await loggedD.textContent();
    expect(/drop — now cancelled/.test(report.log_d), "log: " + report.log_d);
    await undecidedRow(page, ids.d).waitFor({ state: "detached" });
    await page.locator("#hm-undecided-empty").waitFor({ state: "visible" });
    await until(page, "D is cancelled", async () => (await listRow(page, ids.d).getAttribute("data-status")) || "", (s) => s === "cancelled");
    await until(page, "no undecided badge", () => page.locator("#undecided-count").isHidden(), (h) => h);
    await openFromList(page, ids.c);
    const lifeC = (await timeline(page)).map((e) => e.event);
    report.life_c = lifeC;
    expect(lifeC[0] === "prepared" && lifeC.indexOf("undecided") < lifeC.indexOf("confirmed") &&
      lifeC.indexOf("confirmed") < lifeC.indexOf("sent") && lifeC.indexOf("undecided") > 0, "C's timeline: " + lifeC);
    expect(await field(page, "resource") === plan.resource, "C's resource");
    await backToList(page);

    // 8. The message branch E leads to its transaction, and the branch back to E.
    await openFromList(page, ids.e);
    expect(await page.getByTestId("hm-xid").textContent() === plan.xid, "E's transaction link");
    expect(await page.getByTestId("hm-page").getByTestId("hm-commit").count() === 0, "E is decided by its transaction, not here");
    await page.getByTestId("hm-xid").click();
    await page.locator("#view-transactions").waitFor({ state: "visible" });
    const branch = page.locator('[data-testid="branch"][data-type="message"]');
    await branch.waitFor();
    const link = branch.getByTestId("branch-message");
    expect(await link.textContent() === ids.e, "the branch shows E's id");
    await link.click();
    await page.locator("#view-half-messages").waitFor({ state: "visible" });
    await until(page, "E's page again", () => page.getByTestId("hm-id").textContent().catch(() => ""), (t) => t === ids.e);

    // 9. Redrive F, dead after two failed publishes.
    await page.getByTestId("nav-half-messages").click();
    await page.locator("#hm-list-part").waitFor({ state: "visible" });
    await openFromList(page, ids.f);
    expect(await field(page, "publish_failures") === "2", "F's failed publishes");
    expect(/unroutable/.test(await field(page, "last_error")), "F's last error: " + await field(page, "last_error"));
    await page.getByTestId("hm-redrive").click();
    const redriveText = await page.getByTestId("confirm-dialog").textContent();
    expect(redriveText.includes(ids.f) && /again/.test(redriveText), "the redrive question: " + redriveText);
    await page.getByTestId("confirm-ok").click();
    const loggedF = page.locator(`#hm-log li[data-message-id="${ids.f}"]`);
    await loggedF.waitFor();
    report.log_f = await loggedF.textContent();
    expect(/redrive — now confirmed/.test(report.log_f), "log: " + report.log_f);
    await until(page, "F's page says sent", () => field(page, "status"), (s) => s === "sent");
    const lifeF = (await timeline(page)).map((e) => e.event);
    expect(lifeF.lastIndexOf("dead") < lifeF.lastIndexOf("confirmed") && lifeF[lifeF.length - 1] === "sent", "F's timeline: " + lifeF);
    await backToList(page);
    const b = page.locator("#banner");
    expect(await b.isHidden(), "no error banner: " + (await b.textContent()));
    await page.screenshot({ path: join(plan.artifacts, "half-messages.png"), fullPage: true });

    // 10. The audit log names the operator.
    await page.getByTestId("nav-audit").click();
    const audit = await until(page, "the audit log has the three actions", async () =>
      page.locator("#audit-rows tr").evaluateAll((rs) => rs.map((r) => [...r.cells].map((c) => c.textContent))),
    (rows) => ["message commit", "message drop", "message redrive"].every((a) => rows.some((r) => r[3] === a)));
    for (const [action, id] of [["message commit", ids.c], ["message drop", ids.d], ["message redrive", ids.f]]) {
      const r = audit.find((x) => x[3] === action);
      expect(r[2] === "admin" && r[4] === "message " + id && r[5].startsWith("ok"), action + ": " + JSON.stringify(r));
    }

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
