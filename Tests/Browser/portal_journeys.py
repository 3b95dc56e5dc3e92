"""The Custos portal in a real browser: headless Chromium (Debian's chromium and
chromium-driver) driven by selenium, against a real broker and connector that ops/browser-test
starts. Whole journeys, accessibility (axe-core, via axe-selenium-python) on every page with
0 serious or critical violations, and screenshots of every page in Vietnamese and English.

Environment (set by ops/browser-test): PORTAL_URL, PORTAL_USERS (name -> otpauth URI),
PORTAL_PASSWORD, PORTAL_DECISION (a PDF), PORTAL_SCREENSHOTS, PORTAL_DOWNLOADS, PORTAL_SCHEMA,
CUSTOS_DATABASE_URL.
"""
import base64
import hashlib
import hmac
import json
import os
import re
import struct
import subprocess
import time
import unittest
import urllib.parse

from axe_selenium_python import Axe
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import Select, WebDriverWait

URL = os.environ["PORTAL_URL"]
USERS = json.loads(os.environ["PORTAL_USERS"])
PASSWORD = os.environ["PORTAL_PASSWORD"]
DECISION = os.environ["PORTAL_DECISION"]
SHOTS = os.environ["PORTAL_SCREENSHOTS"]
DOWNLOADS = os.environ["PORTAL_DOWNLOADS"]
SCHEMA = os.environ["PORTAL_SCHEMA"]
LAST_STEP = {}


def totp(name, ahead=0):
    """RFC 6238 code of a user's secret (from its otpauth URI), never one already used."""
    query = urllib.parse.parse_qs(urllib.parse.urlparse(USERS[name]).query)
    secret = query["secret"][0]
    key = base64.b32decode(secret + "=" * (-len(secret) % 8))
    step = int(time.time()) // 30 + ahead
    if LAST_STEP.get(name, -1) >= step:  # the broker accepts each code once: wait for the next
        time.sleep(30 - time.time() % 30 + 0.2)
        step = int(time.time()) // 30
    LAST_STEP[name] = step
    digest = hmac.new(key, struct.pack(">Q", step), hashlib.sha1).digest()
    offset = digest[-1] & 0x0F
    value = (struct.unpack(">I", digest[offset:offset + 4])[0] & 0x7FFFFFFF) % 1_000_000
    return "%06d" % value


def browser(width=1280, height=900, phone=False):
    options = webdriver.ChromeOptions()
    for arg in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", f"--window-size={width},{height}", "--lang=vi"]:
        options.add_argument(arg)
    if phone:  # a phone's viewport, touch and pixel ratio (a headless window is never narrower than 500 px)
        options.add_experimental_option("mobileEmulation", {"deviceMetrics": {"width": width, "height": height, "pixelRatio": 3, "touch": True}})
    options.binary_location = "/usr/bin/chromium"
    os.makedirs(DOWNLOADS, exist_ok=True)
    options.add_experimental_option("prefs", {"download.default_directory": DOWNLOADS, "download.prompt_for_download": False})
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    driver.set_page_load_timeout(30)
    return driver


def sql(statement):
    subprocess.run(["psql", os.environ["CUSTOS_DATABASE_URL"], "-q", "-v", "ON_ERROR_STOP=1", "-c",
                    f"SET search_path TO {SCHEMA}; {statement}"], check=True, capture_output=True)


class PortalJourneys(unittest.TestCase):
    pages_checked = 0
    violations = []

    def setUp(self):
        self.drivers = []

    def tearDown(self):
        for d in self.drivers:
            d.quit()

    def open(self, width=1280, height=900, phone=False):
        d = browser(width, height, phone)
        self.drivers.append(d)
        return d

    def wait(self, d, condition, timeout=20):
        # A page being replaced (a submit, a live refresh) is waited through, not failed on.
        return WebDriverWait(d, timeout, ignored_exceptions=(NoSuchElementException, StaleElementReferenceException)).until(condition)

    def check_page(self, d, name):
        """axe-core on the page (0 serious or critical violations), and its screenshot."""
        axe = Axe(d)
        axe.inject()
        results = axe.run()
        bad = [v for v in results["violations"] if v["impact"] in ("serious", "critical")]
        for v in bad:
            PortalJourneys.violations.append(f"{name}: {v['id']} ({v['impact']}): {v['help']} at {[n['target'] for n in v['nodes']][:3]}")
        PortalJourneys.pages_checked += 1
        lang = d.find_element(By.TAG_NAME, "html").get_attribute("lang")
        # The whole page, not only what the window shows (a phone keeps its own viewport).
        size = d.get_window_size()
        height = d.execute_script("return document.documentElement.scrollHeight;")
        if size["width"] > 500 and height > size["height"]:
            d.set_window_size(size["width"], min(height + 120, 8000))
        d.save_screenshot(os.path.join(SHOTS, f"{name}.{lang}.png"))
        if size["width"] > 500 and height > size["height"]:
            d.set_window_size(size["width"], size["height"])
        self.assertEqual(bad, [], f"accessibility violations on {name}")

    def state(self, d):
        """The request page's state, read through live refreshes of its part."""
        return self.wait(d, lambda d: d.find_element(By.ID, "request-state").get_attribute("data-state"))

    def heading(self, d):
        return self.wait(d, lambda d: d.find_element(By.TAG_NAME, "h1").text)

    def sign_in(self, d, name, lang=None):
        d.get(URL + "/portal/sign-in" + (f"?lang={lang}" if lang else ""))
        d.find_element(By.ID, "name").send_keys(name)
        d.find_element(By.ID, "password").send_keys(PASSWORD)
        d.find_element(By.ID, "code").send_keys(totp(name))
        d.find_element(By.CSS_SELECTOR, "form[action='/portal/sign-in'] button[type=submit]").click()
        self.wait(d, EC.presence_of_element_located((By.CSS_SELECTOR, "header nav")))

    def set_value(self, d, element_id, value):
        d.execute_script("arguments[0].value = arguments[1];", d.find_element(By.ID, element_id), value)

    def fill_request(self, d, case_title, emergency=False):
        d.get(URL + "/portal/requests/new")
        d.find_element(By.ID, "caseTitle").send_keys(case_title)
        d.find_element(By.CSS_SELECTOR, "input[name=provider][value=demo-telco]").click()
        d.find_element(By.ID, "decisionNumber").send_keys("QĐ-0042/2026")
        d.find_element(By.ID, "authority").send_keys("Cơ quan Cảnh sát điều tra (tổng hợp)")
        self.set_value(d, "issuedOn", "2026-11-20")
        d.find_element(By.ID, "document").send_keys(DECISION)
        Select(d.find_element(By.ID, "targetType0")).select_by_value("msisdn")
        d.find_element(By.ID, "targetValue0").send_keys("0912 345 678")
        d.find_element(By.CSS_SELECTOR, "input[name=category][value=traffic]").click()
        self.set_value(d, "from", "2026-11-01T07:00")
        self.set_value(d, "to", "2026-11-20T07:00")
        if emergency:
            d.find_element(By.CSS_SELECTOR, "input[name=emergency]").click()
            Select(d.find_element(By.ID, "ground")).select_by_value("threat-to-life")
            d.find_element(By.ID, "statement").send_keys("Nạn nhân tổng hợp đang gặp nguy hiểm đến tính mạng; cần vị trí ngay.")

    def submit_request(self, d):
        d.find_element(By.CSS_SELECTOR, "button[name=then][value=submit]").click()
        self.wait(d, EC.url_matches(r"/portal/requests/[0-9a-f-]{36}$"))
        return d.current_url.rsplit("/", 1)[1]

    def test_1_request_approved_delivered_verified_live_and_downloaded(self):
        inv = self.open()
        self.sign_in(inv, "inv")
        self.assertIn("Tổng quan", inv.page_source)  # Vietnamese by default
        self.check_page(inv, "dashboard")
        self.fill_request(inv, "Vụ lừa đảo qua mạng (tổng hợp)")
        self.check_page(inv, "new-request")
        request_id = self.submit_request(inv)
        self.assertEqual(self.state(inv), "submitted")
        self.assertIn("+84912345678", inv.page_source)
        # A submitter finds no way to approve their own request.
        self.assertEqual(inv.find_elements(By.ID, "approve"), [])
        self.check_page(inv, "request-submitted")
        inv.execute_script("window.__noReload = 'still here';")

        appr = self.open()
        self.sign_in(appr, "appr")
        appr.get(URL + "/portal/inbox")
        self.check_page(appr, "inbox")
        appr.find_element(By.CSS_SELECTOR, f"a[href^='/portal/requests/{request_id}']").click()
        self.wait(appr, EC.presence_of_element_located((By.ID, "approve")))
        self.assertTrue(appr.find_elements(By.CSS_SELECTOR, "object.decision, img.decision"))  # the decision, inline
        self.assertIn("QĐ-0042/2026", appr.page_source)
        self.check_page(appr, "request-approver")
        appr.find_element(By.ID, "approve").click()
        # The answer is the request page again, no longer submitted.
        self.wait(appr, lambda d: d.find_element(By.ID, "request-state").get_attribute("data-state") != "submitted")

        # The connector delivers; the investigator's open page turns to verified without a reload.
        self.wait(inv, lambda d: d.find_element(By.ID, "request-state").get_attribute("data-state") == "verified", timeout=120)
        self.assertEqual(inv.execute_script("return window.__noReload;"), "still here")
        self.check_page(inv, "request-verified")

        # Download: progress, every chunk checked against the signed manifest, the SHA-256 shown.
        # Found and clicked in one step, again if a live refresh replaced the link meanwhile.
        def click_download(d):
            link = d.find_element(By.CSS_SELECTOR, "a[data-download]")
            package = link.get_attribute("data-download")
            link.click()
            return package
        package_id = self.wait(inv, click_download)
        output = self.wait(inv, lambda d: d.find_element(By.CSS_SELECTOR, f".download[data-package='{package_id}'] output[data-sha256]"), timeout=60)
        shown = output.get_attribute("data-sha256")
        self.assertEqual(output.get_attribute("data-checked"), "chunks")
        path = os.path.join(DOWNLOADS, f"{package_id}.ndjson")
        self.wait(inv, lambda d: os.path.exists(path) and not os.path.exists(path + ".crdownload"), timeout=30)
        with open(path, "rb") as f:
            self.assertEqual(hashlib.sha256(f.read()).hexdigest(), shown)

        # The same page in English, switched in the page.
        inv.find_element(By.CSS_SELECTOR, "a[hreflang=en]").click()
        self.wait(inv, lambda d: d.find_element(By.TAG_NAME, "html").get_attribute("lang") == "en")
        self.assertIn("Verified", inv.page_source)
        self.check_page(inv, "request-verified")
        for path, name in [("/portal/", "dashboard"), ("/portal/requests/new", "new-request"), ("/portal/inbox", "inbox")]:
            inv.get(URL + path)
            self.check_page(inv, name)
        appr.get(URL + "/portal/inbox?lang=en")
        self.check_page(appr, "inbox-approver")

    def test_2_emergency_approved_on_a_phone(self):
        inv = self.open()
        self.sign_in(inv, "inv")
        self.fill_request(inv, "Khẩn cấp: đe doạ tính mạng (tổng hợp)", emergency=True)
        request_id = self.submit_request(inv)

        phone = self.open(390, 844, phone=True)
        self.sign_in(phone, "duty")
        phone.get(URL + "/portal/emergencies")
        card = self.wait(phone, EC.presence_of_element_located((By.CSS_SELECTOR, f"article.duty a[href='/portal/requests/{request_id}']")))
        self.assertIn("Đe doạ tính mạng", phone.page_source)
        self.check_page(phone, "emergencies-phone")
        # Fits the phone: nothing wider than the screen.
        self.assertEqual(phone.execute_script("return window.innerWidth;"), 390)
        self.assertLessEqual(phone.execute_script("return document.documentElement.scrollWidth;"), 390)
        # Approve with the second factor: type the code, tap approve (asked only when the last is old).
        form = card.find_element(By.XPATH, "ancestor::article").find_element(By.CSS_SELECTOR, "form.approve")
        codes = form.find_elements(By.NAME, "code")
        if codes:
            codes[0].send_keys(totp("duty"))
        form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        # Back on the queue, which no longer holds it.
        self.wait(phone, lambda d: request_id not in d.page_source and d.current_url.endswith("/portal/emergencies"))
        phone.get(URL + f"/portal/requests/{request_id}")
        self.assertTrue(phone.find_elements(By.ID, "request-state"), phone.find_element(By.TAG_NAME, "main").text[:500])
        self.assertIn(self.state(phone),
                      ["approved", "dispatched", "acknowledged", "in-progress", "delivered", "verified"])
        phone.get(URL + "/portal/emergencies?lang=en")
        self.check_page(phone, "emergencies-phone")

        # The reviewer then confirms or revokes it against the review clock.
        rev = self.open()
        self.sign_in(rev, "rev")
        rev.get(URL + "/portal/reviews")
        self.wait(rev, EC.presence_of_element_located((By.CSS_SELECTOR, f"a[href='/portal/requests/{request_id}']")))
        self.check_page(rev, "reviews")
        rev.get(URL + "/portal/reviews?lang=en")
        self.check_page(rev, "reviews")

    def test_3_isolation_csrf_and_expired_sessions(self):
        inv = self.open()
        self.sign_in(inv, "inv")
        self.fill_request(inv, "Vụ việc riêng (tổng hợp)")
        request_id = self.submit_request(inv)

        # Another agency's request id answers "not found".
        stranger = self.open()
        self.sign_in(stranger, "stranger")
        stranger.get(URL + f"/portal/requests/{request_id}")
        self.assertIn("Không tìm thấy", self.heading(stranger))
        self.check_page(stranger, "not-found")

        # A form posted without its CSRF token is refused, and nothing changes.
        appr = self.open()
        self.sign_in(appr, "appr")
        appr.get(URL + f"/portal/requests/{request_id}")
        self.assertTrue(appr.find_elements(By.ID, "approve"))
        appr.execute_script("var f = document.createElement('form'); f.method = 'post'; f.action = arguments[0];"
                            "document.body.appendChild(f); f.submit();", f"/portal/requests/{request_id}/approve")
        self.wait(appr, lambda d: "Không được phép" in d.find_element(By.TAG_NAME, "h1").text)
        appr.get(URL + f"/portal/requests/{request_id}")
        self.assertEqual(self.state(appr), "submitted")

        # An expired session sends the user to sign in (and back where they were afterwards).
        sql("UPDATE portal_sessions SET last_seen_at = now() - interval '16 minutes' WHERE user_id = (SELECT id FROM users WHERE name = 'appr')")
        appr.get(URL + f"/portal/requests/{request_id}")
        self.wait(appr, EC.url_contains("/portal/sign-in"))
        self.assertIn("next=/portal/requests/", appr.current_url)
        self.check_page(appr, "sign-in")
        appr.get(URL + "/portal/sign-in?lang=en")
        self.check_page(appr, "sign-in")

    def test_4_auditor_and_admin_pages(self):
        aud = self.open()
        self.sign_in(aud, "aud")
        aud.get(URL + "/portal/custody")
        self.assertIn("Chuỗi lưu giữ", aud.page_source)
        # An event's inclusion proof, checked in the page's server.
        aud.get(URL + "/portal/custody?event=0")
        self.assertIn("RFC 9162", aud.find_element(By.CSS_SELECTOR, ".alert").text)
        self.check_page(aud, "custody")
        aud.get(URL + "/portal/custody?event=0&lang=en")
        self.check_page(aud, "custody")
        adm = self.open()
        self.sign_in(adm, "adm")
        adm.get(URL + "/portal/admin/users")
        self.assertIn("duty", adm.page_source)
        self.assertNotIn("stranger", adm.page_source)  # another agency's users are not listed
        self.check_page(adm, "users")
        adm.get(URL + "/portal/admin/users?lang=en")
        self.check_page(adm, "users")

    @classmethod
    def tearDownClass(cls):
        print(f"axe-core: {cls.pages_checked} page views checked, {len(cls.violations)} serious or critical violations")
        for v in cls.violations:
            print("  " + v)
        shots = sorted(f for f in os.listdir(SHOTS) if f.endswith(".png"))
        print(f"screenshots: {len(shots)} in {SHOTS}")


if __name__ == "__main__":
    unittest.main()
