import Foundation

/// Versioned schema migrations, applied in order at start under an advisory lock, each in
/// its own transaction; applying them again is harmless. Never edit a released migration:
/// add the next one.
struct Migration: Sendable {
    let version: Int
    let name: String
    let sql: String

    /// The statements one by one: the extended query protocol takes a single statement.
    /// A statement ends with a line ending in `;` outside a `$$` body.
    var statements: [String] {
        var out: [String] = []
        var current: [Substring] = []
        var inDollarBody = false
        for line in sql.split(separator: "\n", omittingEmptySubsequences: false) {
            current.append(line)
            if line.components(separatedBy: "$$").count % 2 == 0 { inDollarBody.toggle() }
            if !inDollarBody && line.trimmingCharacters(in: .whitespaces).hasSuffix(";") {
                out.append(current.joined(separator: "\n"))
                current = []
            }
        }
        let rest = current.joined(separator: "\n").trimmingCharacters(in: .whitespacesAndNewlines)
        if !rest.isEmpty { out.append(rest) }
        return out
    }
}

enum Migrations {
    static let all: [Migration] = [
        Migration(version: 1, name: "foundation", sql: """
            CREATE TABLE users (
                id uuid PRIMARY KEY,
                name text NOT NULL UNIQUE,
                role text NOT NULL CHECK (role IN ('investigator', 'approver', 'admin')),
                token_sha256 bytea NOT NULL UNIQUE,
                created_at timestamptz NOT NULL DEFAULT now()
            );
            CREATE TABLE providers (
                id text PRIMARY KEY,
                -- The signing certificate (its key signs messages) and the CA it must chain to.
                certificate_pem text NOT NULL,
                ca_certificate_pem text NOT NULL,
                public_key_pem text NOT NULL,
                updated_at timestamptz NOT NULL DEFAULT now()
            );
            CREATE TABLE cases (
                id uuid PRIMARY KEY,
                title text NOT NULL,
                created_by uuid NOT NULL REFERENCES users(id),
                created_at timestamptz NOT NULL DEFAULT now()
            );
            CREATE TABLE requests (
                id uuid PRIMARY KEY,
                case_id uuid NOT NULL REFERENCES cases(id),
                provider_id text NOT NULL REFERENCES providers(id),
                spec text NOT NULL,
                state text NOT NULL,
                created_by uuid NOT NULL REFERENCES users(id),
                submitted_by uuid REFERENCES users(id),
                approved_by uuid REFERENCES users(id),
                approved_request text,
                request_hash text,
                created_at timestamptz NOT NULL DEFAULT now(),
                updated_at timestamptz NOT NULL DEFAULT now(),
                -- Four eyes, enforced by the database as well as by the code.
                CONSTRAINT four_eyes CHECK (approved_by IS NULL OR approved_by <> submitted_by)
            );
            CREATE TABLE request_events (
                id bigserial PRIMARY KEY,
                request_id uuid NOT NULL REFERENCES requests(id),
                at timestamptz NOT NULL DEFAULT clock_timestamp(),
                state text NOT NULL,
                actor text NOT NULL,
                note text
            );
            CREATE INDEX request_events_by_request ON request_events(request_id, id);
            -- Transactional outbox: written with the state change, relayed to Kafka afterwards.
            CREATE TABLE outbox (
                id bigserial PRIMARY KEY,
                message_id uuid NOT NULL UNIQUE,
                message_type text NOT NULL,
                request_id uuid NOT NULL,
                topic text NOT NULL,
                payload bytea NOT NULL,
                created_at timestamptz NOT NULL DEFAULT now(),
                sent_at timestamptz
            );
            CREATE INDEX outbox_unsent ON outbox(id) WHERE sent_at IS NULL;
            -- Every consumed message id, so that a redelivered message has no second effect.
            CREATE TABLE inbox (
                message_id uuid PRIMARY KEY,
                message_type text NOT NULL,
                request_id uuid NOT NULL,
                received_at timestamptz NOT NULL DEFAULT now()
            );
            CREATE TABLE dead_letters (
                id bigserial PRIMARY KEY,
                topic text NOT NULL,
                kafka_partition int NOT NULL,
                kafka_offset bigint NOT NULL,
                reason text NOT NULL,
                payload bytea NOT NULL,
                received_at timestamptz NOT NULL DEFAULT now(),
                UNIQUE (topic, kafka_partition, kafka_offset)
            );
            CREATE TABLE packages (
                id uuid PRIMARY KEY,
                request_id uuid NOT NULL REFERENCES requests(id),
                provider_id text NOT NULL REFERENCES providers(id),
                manifest text NOT NULL,
                manifest_signature bytea NOT NULL,
                time_stamp bytea NOT NULL,
                time_stamped_at timestamptz,
                time_stamp_accuracy_us bigint,
                signer text,
                signer_certificate text,
                manifest_sha256 text NOT NULL,
                chunk_count int NOT NULL,
                content_size bigint NOT NULL,
                chunks_root text NOT NULL,
                state text NOT NULL DEFAULT 'receiving',
                complete_received boolean NOT NULL DEFAULT false,
                verification text,
                received_at timestamptz NOT NULL DEFAULT now(),
                verified_at timestamptz
            );
            CREATE INDEX packages_by_request ON packages(request_id);
            CREATE TABLE package_chunks (
                package_id uuid NOT NULL REFERENCES packages(id),
                idx int NOT NULL,
                sha256 text NOT NULL,
                size int NOT NULL,
                data bytea NOT NULL,
                PRIMARY KEY (package_id, idx)
            );
            """),
        Migration(version: 2, name: "custody log", sql: """
            -- The custody log. Events are sequenced densely from 0 by one counter row (its lock
            -- is held to commit, so committed events are always a gap-free prefix).
            CREATE TABLE custody_sequence (id int PRIMARY KEY CHECK (id = 1), next_index bigint NOT NULL);
            INSERT INTO custody_sequence VALUES (1, 0);
            CREATE TABLE custody_events (
                idx bigint PRIMARY KEY,
                kind text NOT NULL,
                request_id uuid,
                package_id uuid,
                -- RFC 8785 canonical JSON of the event: the Merkle leaf is SHA-256(0x00 || entry).
                entry bytea NOT NULL
            );
            CREATE INDEX custody_events_by_request ON custody_events(request_id) WHERE request_id IS NOT NULL;
            CREATE INDEX custody_events_by_package ON custody_events(package_id) WHERE package_id IS NOT NULL;
            CREATE INDEX custody_events_key_changes ON custody_events(idx) WHERE kind = 'admin.key-changed';
            -- The integrated tree's hashes in tiles of 256 (C2SP tlog-tiles layout); its size is
            -- the newest checkpoint's. Tiles are derived data (the audit recomputes them); the
            -- rightmost of a level grows.
            CREATE TABLE custody_tiles (
                level int NOT NULL,
                idx bigint NOT NULL,
                hashes bytea NOT NULL,
                PRIMARY KEY (level, idx)
            );
            -- Signed tree heads: the checkpoint text, its CMS signature, and the RFC 3161
            -- time-stamp over that signature.
            CREATE TABLE custody_checkpoints (
                size bigint PRIMARY KEY,
                root bytea NOT NULL,
                body text NOT NULL,
                signature bytea NOT NULL,
                time_stamp bytea NOT NULL,
                created_at timestamptz NOT NULL DEFAULT clock_timestamp()
            );
            CREATE TABLE witnesses (
                name text PRIMARY KEY,
                certificate_pem text NOT NULL,
                created_at timestamptz NOT NULL DEFAULT now()
            );
            -- No foreign key to custody_checkpoints: checking one locks the checkpoint row, which
            -- needs the UPDATE privilege the broker's role no longer has there.
            CREATE TABLE custody_cosignatures (
                checkpoint_size bigint NOT NULL,
                witness text NOT NULL REFERENCES witnesses(name),
                signature bytea NOT NULL,
                created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
                PRIMARY KEY (checkpoint_size, witness)
            );
            -- Append-only, whoever asks: the broker's own role loses UPDATE, DELETE and TRUNCATE
            -- (below), and these triggers refuse them even to an owner or superuser.
            CREATE FUNCTION custody_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                RAISE EXCEPTION 'the custody log is append-only: % on % refused', TG_OP, TG_TABLE_NAME
                    USING ERRCODE = 'integrity_constraint_violation';
            END;
            $$;
            CREATE TRIGGER custody_events_append_only BEFORE UPDATE OR DELETE ON custody_events
                FOR EACH ROW EXECUTE FUNCTION custody_refuse_change();
            CREATE TRIGGER custody_events_no_truncate BEFORE TRUNCATE ON custody_events
                FOR EACH STATEMENT EXECUTE FUNCTION custody_refuse_change();
            CREATE TRIGGER custody_checkpoints_append_only BEFORE UPDATE OR DELETE ON custody_checkpoints
                FOR EACH ROW EXECUTE FUNCTION custody_refuse_change();
            CREATE TRIGGER custody_checkpoints_no_truncate BEFORE TRUNCATE ON custody_checkpoints
                FOR EACH STATEMENT EXECUTE FUNCTION custody_refuse_change();
            CREATE TRIGGER custody_cosignatures_append_only BEFORE UPDATE OR DELETE ON custody_cosignatures
                FOR EACH ROW EXECUTE FUNCTION custody_refuse_change();
            CREATE TRIGGER custody_cosignatures_no_truncate BEFORE TRUNCATE ON custody_cosignatures
                FOR EACH STATEMENT EXECUTE FUNCTION custody_refuse_change();
            REVOKE UPDATE, DELETE, TRUNCATE ON custody_events, custody_checkpoints, custody_cosignatures FROM PUBLIC, CURRENT_USER;
            -- Roles that read the log and co-sign checkpoints.
            ALTER TABLE users DROP CONSTRAINT users_role_check;
            ALTER TABLE users ADD CONSTRAINT users_role_check CHECK (role IN ('investigator', 'approver', 'admin', 'auditor', 'witness'));
            -- Sealed packages are kept but not released.
            ALTER TABLE packages ADD COLUMN sealed boolean NOT NULL DEFAULT false;
            """),
        Migration(version: 3, name: "legal clocks", sql: """
            -- Legal clocks live here, not in timers, so they survive restarts. A clock runs from
            -- its start until the state it waits for is reached (stopped_at); the watcher marks
            -- it late at its deadline, escalated at escalate_at and, for the delivery clock,
            -- expires the request at expire_at.
            CREATE TABLE request_clocks (
                request_id uuid NOT NULL REFERENCES requests(id),
                clock text NOT NULL CHECK (clock IN ('acknowledgement', 'delivery')),
                started_at timestamptz NOT NULL,
                deadline timestamptz NOT NULL,
                escalate_at timestamptz NOT NULL,
                expire_at timestamptz,
                stopped_at timestamptz,
                late_at timestamptz,
                escalated_at timestamptz,
                expired_at timestamptz,
                PRIMARY KEY (request_id, clock)
            );
            CREATE INDEX request_clocks_running ON request_clocks (deadline) WHERE stopped_at IS NULL;
            """),
        Migration(version: 4, name: "agencies", sql: """
            -- Cases belong to an agency, and people see only their own agency's cases, requests
            -- and packages: every query that serves them filters on it.
            CREATE TABLE agencies (
                id text PRIMARY KEY CHECK (id ~ '^[a-z0-9][a-z0-9-]{1,62}$'),
                name text NOT NULL,
                created_at timestamptz NOT NULL DEFAULT now()
            );
            INSERT INTO agencies (id, name) VALUES ('default', 'Default agency');
            ALTER TABLE users ADD COLUMN agency text NOT NULL DEFAULT 'default' REFERENCES agencies(id);
            ALTER TABLE cases ADD COLUMN agency text NOT NULL DEFAULT 'default' REFERENCES agencies(id);
            CREATE INDEX cases_by_agency ON cases(agency);
            """),
        Migration(version: 5, name: "emergency fast track", sql: """
            -- Duty approvers fast-track emergencies alone; reviewers confirm or revoke them after.
            ALTER TABLE users DROP CONSTRAINT users_role_check;
            ALTER TABLE users ADD CONSTRAINT users_role_check
                CHECK (role IN ('investigator', 'approver', 'admin', 'auditor', 'witness', 'duty-approver', 'reviewer'));
            -- An emergency's review clock: at its deadline an unconfirmed emergency lapses.
            ALTER TABLE request_clocks DROP CONSTRAINT request_clocks_clock_check;
            ALTER TABLE request_clocks ADD CONSTRAINT request_clocks_clock_check CHECK (clock IN ('acknowledgement', 'delivery', 'review'));
            -- The review of an emergency request: pending from approval until a reviewer confirms or
            -- revokes it, or its clock runs out (lapsed).
            ALTER TABLE requests ADD COLUMN review text CHECK (review IN ('pending', 'confirmed', 'revoked', 'lapsed'));
            ALTER TABLE requests ADD COLUMN reviewed_by uuid REFERENCES users(id);
            ALTER TABLE requests ADD COLUMN reviewed_at timestamptz;
            ALTER TABLE requests ADD CONSTRAINT reviewer_is_another CHECK (reviewed_by IS NULL OR (reviewed_by <> submitted_by AND reviewed_by <> approved_by));
            -- Why a package is sealed, shown when its release is refused.
            ALTER TABLE packages ADD COLUMN seal_reason text;
            -- Urgent messages (emergency requests, revocations) are relayed before any other.
            ALTER TABLE outbox ADD COLUMN urgent boolean NOT NULL DEFAULT false;
            CREATE INDEX outbox_unsent_urgent ON outbox(id) WHERE sent_at IS NULL AND urgent;
            """),
        Migration(version: 6, name: "clarifications", sql: """
            -- A provider's questions about a request (id: its message's id), and the answers.
            CREATE TABLE clarifications (
                id uuid PRIMARY KEY,
                request_id uuid NOT NULL REFERENCES requests(id),
                question text NOT NULL,
                asked_at timestamptz NOT NULL DEFAULT now(),
                answer text,
                answered_by uuid REFERENCES users(id),
                answered_at timestamptz
            );
            CREATE INDEX clarifications_by_request ON clarifications(request_id);
            -- While a question waits for its answer the provider's clocks do not run; the answer
            -- moves their deadlines by the time waited.
            ALTER TABLE request_clocks ADD COLUMN paused_at timestamptz;
            """),
        Migration(version: 7, name: "webhook notifications", sql: """
            -- Webhook deliveries, one row per (event, endpoint), queued in the transaction that
            -- records the event; the payload holds ids and times only.
            CREATE TABLE notifications (
                id uuid PRIMARY KEY,
                endpoint text NOT NULL,
                event text NOT NULL,
                request_id uuid NOT NULL REFERENCES requests(id),
                payload text NOT NULL,
                created_at timestamptz NOT NULL DEFAULT now(),
                attempts int NOT NULL DEFAULT 0,
                next_attempt_at timestamptz NOT NULL DEFAULT now(),
                delivered_at timestamptz,
                given_up_at timestamptz,
                last_error text
            );
            CREATE INDEX notifications_due ON notifications(next_attempt_at) WHERE delivered_at IS NULL AND given_up_at IS NULL;
            """),
        Migration(version: 8, name: "decision documents", sql: """
            -- The decisions that authorise requests, per agency, named by their SHA-256; a
            -- request's legal basis names one, and its hash is bound into the request as approved.
            CREATE TABLE documents (
                agency text NOT NULL REFERENCES agencies(id),
                sha256 text NOT NULL,
                media_type text NOT NULL,
                size int NOT NULL,
                content bytea NOT NULL,
                uploaded_by uuid NOT NULL REFERENCES users(id),
                uploaded_at timestamptz NOT NULL DEFAULT now(),
                PRIMARY KEY (agency, sha256)
            );
            """),
        Migration(version: 9, name: "client certificates", sql: """
            -- TLS client certificates that name a user (mutual TLS), by the SHA-256 of their DER.
            CREATE TABLE user_certificates (
                sha256 text PRIMARY KEY,
                user_id uuid NOT NULL REFERENCES users(id),
                subject text NOT NULL,
                not_after timestamptz NOT NULL,
                added_at timestamptz NOT NULL DEFAULT now()
            );
            """),
        Migration(version: 10, name: "preservation orders", sql: """
            -- A preservation order's clock (its deadline ends the order) is extended once; this
            -- records when.
            ALTER TABLE request_clocks DROP CONSTRAINT request_clocks_clock_check;
            ALTER TABLE request_clocks ADD CONSTRAINT request_clocks_clock_check
                CHECK (clock IN ('acknowledgement', 'delivery', 'review', 'preservation'));
            ALTER TABLE request_clocks ADD COLUMN extended_at timestamptz;
            """),
        Migration(version: 11, name: "requests to several providers", sql: """
            -- A request to several providers is one part (row) per provider, sharing group_id
            -- (the first part's id); each part has its own state, clocks and packages.
            ALTER TABLE requests ADD COLUMN group_id uuid;
            CREATE INDEX requests_by_group ON requests(group_id) WHERE group_id IS NOT NULL;
            """),
        Migration(version: 12, name: "provider progress", sql: """
            -- The provider's latest status message: what it is doing and how far along.
            ALTER TABLE requests ADD COLUMN progress_phase text, ADD COLUMN progress_percent int, ADD COLUMN progress_at timestamptz;
            """),
        Migration(version: 13, name: "the four criteria", sql: """
            -- The verdict on a package (đúng, đủ, sạch, sống), canonical JSON, as computed when it
            -- completed; admissible only when all four pass.
            ALTER TABLE packages ADD COLUMN criteria text, ADD COLUMN admissible boolean;
            """),
        Migration(version: 14, name: "manifests in parts", sql: """
            -- The parts of a manifest too large for one Kafka message, until the last one is in;
            -- then the manifest is applied and its parts removed.
            CREATE TABLE manifest_parts (
                package_id uuid NOT NULL,
                request_id uuid NOT NULL REFERENCES requests(id),
                idx int NOT NULL CHECK (idx >= 0),
                count int NOT NULL CHECK (count BETWEEN 2 AND 1024 AND idx < count),
                body_sha256 text NOT NULL,
                data bytea NOT NULL,
                PRIMARY KEY (package_id, idx)
            );
            """),
        Migration(version: 15, name: "message content in the inbox", sql: """
            -- SHA-256 of what a provider message says (its signed bytes less the signature, and a
            -- chunk's data): the same id again with other content is a conflict, not a duplicate.
            -- Null for messages applied before this column existed.
            ALTER TABLE inbox ADD COLUMN content_sha256 text;
            """),
        Migration(version: 16, name: "package protocol v2: chunks first, in the chunk store", sql: """
            -- Chunks arrive before their manifest and are kept in the chunk store (storage.*);
            -- package_chunks is their index: location in the store, and the results each holds
            -- (the chunk message's `results`, canonical JSON). `data` is kept only for chunks
            -- stored here before the chunk store existed, which are still served from here.
            ALTER TABLE package_chunks DROP CONSTRAINT IF EXISTS package_chunks_package_id_fkey;
            ALTER TABLE package_chunks ALTER COLUMN data DROP NOT NULL;
            ALTER TABLE package_chunks ADD COLUMN request_id uuid REFERENCES requests(id), ADD COLUMN location text, ADD COLUMN results text;
            UPDATE package_chunks c SET request_id = p.request_id FROM packages p WHERE p.id = c.package_id;
            ALTER TABLE package_chunks ALTER COLUMN request_id SET NOT NULL;
            ALTER TABLE package_chunks ADD CONSTRAINT package_chunks_stored CHECK ((data IS NULL) <> (location IS NULL));
            -- A package whose chunks are arriving: whose it is, how many chunks (0 ..< checked)
            -- have been checked in order, how many are stored, and whether its manifest is in.
            -- Made by its first chunk or its manifest.
            CREATE TABLE arriving_packages (
                package_id uuid PRIMARY KEY,
                request_id uuid NOT NULL REFERENCES requests(id),
                provider_id text NOT NULL,
                checked int NOT NULL DEFAULT 0 CHECK (checked >= 0),
                stored int NOT NULL DEFAULT 0 CHECK (stored >= 0),
                manifest_in boolean NOT NULL DEFAULT false,
                first_at timestamptz NOT NULL DEFAULT now()
            );
            INSERT INTO arriving_packages (package_id, request_id, provider_id, checked, stored, manifest_in)
                SELECT p.id, p.request_id, p.provider_id, 0, (SELECT count(*) FROM package_chunks c WHERE c.package_id = p.id), true FROM packages p;
            CREATE INDEX package_chunks_by_request ON package_chunks(request_id);
            """),
        Migration(version: 17, name: "work queues: lists, inbox, shared cases, live events", sql: """
            -- What the lists filter and sort on, kept on the request itself (the spec is text):
            -- its agency (its case's), priority and kind; each list is one index range scan.
            ALTER TABLE requests ADD COLUMN agency text REFERENCES agencies(id), ADD COLUMN priority text, ADD COLUMN kind text;
            UPDATE requests r SET agency = c.agency FROM cases c WHERE c.id = r.case_id;
            UPDATE requests SET priority = coalesce(spec::jsonb->>'priority', 'normal'), kind = coalesce(spec::jsonb->>'kind', 'production');
            ALTER TABLE requests ALTER COLUMN agency SET NOT NULL, ALTER COLUMN priority SET NOT NULL, ALTER COLUMN kind SET NOT NULL;
            ALTER TABLE requests ADD CONSTRAINT requests_priority_check CHECK (priority IN ('normal', 'emergency'));
            ALTER TABLE requests ADD CONSTRAINT requests_kind_check CHECK (kind IN ('production', 'preservation'));
            CREATE INDEX requests_by_agency_updated ON requests (agency, updated_at DESC, id DESC);
            CREATE INDEX requests_by_agency_created ON requests (agency, created_at DESC, id DESC);
            CREATE INDEX requests_by_agency_state ON requests (agency, state, updated_at DESC, id DESC);
            CREATE INDEX requests_by_case ON requests (case_id, updated_at DESC, id DESC);
            CREATE INDEX requests_awaiting_review ON requests (agency) WHERE review = 'pending';
            CREATE INDEX cases_by_agency_created ON cases (agency, created_at DESC, id DESC);
            -- Colleagues an investigator shares a case with: they see and act on its requests as
            -- its author does. The author is a member from the start.
            CREATE TABLE case_members (
                case_id uuid NOT NULL REFERENCES cases(id),
                user_id uuid NOT NULL REFERENCES users(id),
                added_by uuid REFERENCES users(id),
                added_at timestamptz NOT NULL DEFAULT now(),
                PRIMARY KEY (case_id, user_id)
            );
            CREATE INDEX case_members_by_user ON case_members (user_id, case_id);
            INSERT INTO case_members (case_id, user_id) SELECT id, created_by FROM cases;
            -- When a package was first opened by a person (viewed, downloaded or exported).
            ALTER TABLE packages ADD COLUMN opened_at timestamptz;
            CREATE INDEX packages_unopened ON packages (request_id) WHERE opened_at IS NULL AND state <> 'receiving';
            CREATE INDEX clarifications_open ON clarifications (request_id) WHERE answer IS NULL;
            -- The live feed (GET /v1/events): one row per state change, clock, question and
            -- delivery, written in the transaction that causes it; ids and states only. Its id
            -- is the Server-Sent Events id a client resumes from.
            CREATE TABLE live_events (
                id bigserial PRIMARY KEY,
                at timestamptz NOT NULL DEFAULT clock_timestamp(),
                agency text NOT NULL,
                case_id uuid NOT NULL,
                request_id uuid,
                kind text NOT NULL,
                data text NOT NULL
            );
            CREATE INDEX live_events_by_agency ON live_events (agency, id);
            CREATE INDEX live_events_by_time ON live_events (at);
            """),
        Migration(version: 18, name: "e-mail notifications", sql: """
            -- Where a person is told by e-mail, and which events they chose (NULL: every one that
            -- concerns their role or cases).
            ALTER TABLE users ADD COLUMN email text CHECK (email IS NULL OR (length(email) <= 254 AND email ~ '^[^@[:space:]<>]+@[^@[:space:]<>]+$')),
                              ADD COLUMN email_events text[];
            -- The queue holds e-mails beside webhooks: channel, and the person it is for.
            ALTER TABLE notifications ADD COLUMN channel text NOT NULL DEFAULT 'webhook' CHECK (channel IN ('webhook', 'email')),
                                      ADD COLUMN recipient uuid REFERENCES users(id);
            """),
        Migration(version: 19, name: "webhook endpoints", sql: """
            -- The configured webhook endpoints and their events (webhooks.*), written at start, so
            -- that the transaction that causes a work-queue event queues its webhooks in SQL.
            CREATE TABLE webhook_endpoints (url text PRIMARY KEY, events text[] NOT NULL);
            """),
        Migration(version: 20, name: "portal sign-in and sessions", sql: """
            -- Sign-in to the portal: a bcrypt password and an RFC 6238 TOTP secret (custos-broker
            -- users enrol). totp_last_step: the newest time step a code was accepted for, so that
            -- no code is accepted twice (RFC 6238 §5.2). Failed sign-ins lock the user out a while.
            ALTER TABLE users ADD COLUMN password_bcrypt text, ADD COLUMN totp_secret text, ADD COLUMN totp_last_step bigint NOT NULL DEFAULT 0,
                              ADD COLUMN failed_signins integer NOT NULL DEFAULT 0, ADD COLUMN locked_until timestamptz;
            -- Portal sessions, server-side: the cookie holds a random token, stored only as its
            -- SHA-256. csrf: the token every form of the session carries.
            CREATE TABLE portal_sessions (
                id_sha256 bytea PRIMARY KEY,
                user_id uuid NOT NULL REFERENCES users(id),
                csrf text NOT NULL,
                method text NOT NULL CHECK (method IN ('password', 'certificate')),
                certificate_sha256 text,
                created_at timestamptz NOT NULL DEFAULT now(),
                last_seen_at timestamptz NOT NULL DEFAULT now(),
                second_factor_at timestamptz NOT NULL DEFAULT now(),
                ended_at timestamptz
            );
            CREATE INDEX portal_sessions_by_user ON portal_sessions (user_id);
            -- The last result of custos-broker audit, which the portal shows auditors.
            CREATE TABLE audit_results (
                id bigserial PRIMARY KEY,
                at timestamptz NOT NULL DEFAULT now(),
                consistent boolean NOT NULL,
                events bigint NOT NULL,
                checkpoints bigint NOT NULL,
                chunks bigint NOT NULL,
                problems integer NOT NULL
            );
            """),
        Migration(version: 21, name: "request messages sent again until acknowledged", sql: """
            -- How many times a request message was sent again for want of the provider's ack
            -- (RequestResend); the row's sent_at is its last sending.
            ALTER TABLE outbox ADD COLUMN resends integer NOT NULL DEFAULT 0;
            CREATE INDEX outbox_requests ON outbox (request_id) WHERE message_type = 'request';
            CREATE INDEX requests_dispatched ON requests (id) WHERE state = 'dispatched';
            """),
        Migration(version: 22, name: "missing chunks asked for again", sql: """
            -- When a chunk of an arriving package last arrived, and how many times (and when last)
            -- the broker asked the provider for chunks the manifest lists and it lacks (PackageResend).
            ALTER TABLE arriving_packages ADD COLUMN last_at timestamptz NOT NULL DEFAULT now(),
                ADD COLUMN resend_requests integer NOT NULL DEFAULT 0, ADD COLUMN resend_requested_at timestamptz;
            CREATE INDEX arriving_packages_with_manifest ON arriving_packages (package_id) WHERE manifest_in;
            -- A Kafka that loses its state (Tansu restarted, a topic deleted and made again) numbers
            -- offsets from 0 again: a dead letter is the same one only with the same bytes too.
            ALTER TABLE dead_letters DROP CONSTRAINT IF EXISTS dead_letters_topic_kafka_partition_kafka_offset_key;
            CREATE UNIQUE INDEX dead_letters_once ON dead_letters (topic, kafka_partition, kafka_offset, sha256(payload));
            """),
        Migration(version: 23, name: "C2SP signed-note checkpoints and tlog-witness cosignatures", sql: """
            -- The log's C2SP signed-note signature line over each checkpoint's text (Ed25519, the key
            -- named after the origin); NULL for checkpoints made before.
            ALTER TABLE custody_checkpoints ADD COLUMN note_signature text;
            -- Cosignatures returned by C2SP witnesses (c2sp.org/tlog-cosignature lines) to the
            -- broker's add-checkpoint pushes, checked against the witness's key before stored.
            CREATE TABLE custody_note_cosignatures (
                checkpoint_size bigint NOT NULL,
                witness text NOT NULL,
                line text NOT NULL,
                created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
                PRIMARY KEY (checkpoint_size, witness)
            );
            CREATE TRIGGER custody_note_cosignatures_append_only BEFORE UPDATE OR DELETE ON custody_note_cosignatures
                FOR EACH ROW EXECUTE FUNCTION custody_refuse_change();
            CREATE TRIGGER custody_note_cosignatures_no_truncate BEFORE TRUNCATE ON custody_note_cosignatures
                FOR EACH STATEMENT EXECUTE FUNCTION custody_refuse_change();
            REVOKE UPDATE, DELETE, TRUNCATE ON custody_note_cosignatures FROM PUBLIC, CURRENT_USER;
            -- The size each C2SP witness last said it holds for this log (its vkey names it).
            CREATE TABLE c2sp_witness_sizes (
                witness text PRIMARY KEY,
                size bigint NOT NULL,
                updated_at timestamptz NOT NULL DEFAULT now()
            );
            """),
        Migration(version: 24, name: "time-stamp renewals", sql: """
            -- Renewals in the manner of RFC 4998 §5.2 (TimeStampRenewal): `token` holds the
            -- renewal element (a time-stamp over a tree of many chains' imprints, and this
            -- chain's audit path) whose leaf covers the signed object, its signature and items
            -- 0…seq−1 (0: the original time-stamp, kept on the package or checkpoint row).
            -- Append-only, like the log.
            CREATE TABLE time_stamp_renewals (
                subject text NOT NULL CHECK (subject IN ('package', 'checkpoint')),
                subject_id text NOT NULL,
                seq integer NOT NULL CHECK (seq >= 1),
                token bytea NOT NULL,
                tsa_not_after timestamptz NOT NULL,
                created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
                PRIMARY KEY (subject, subject_id, seq)
            );
            CREATE TRIGGER time_stamp_renewals_append_only BEFORE UPDATE OR DELETE ON time_stamp_renewals
                FOR EACH ROW EXECUTE FUNCTION custody_refuse_change();
            CREATE TRIGGER time_stamp_renewals_no_truncate BEFORE TRUNCATE ON time_stamp_renewals
                FOR EACH STATEMENT EXECUTE FUNCTION custody_refuse_change();
            REVOKE UPDATE, DELETE, TRUNCATE ON time_stamp_renewals FROM PUBLIC, CURRENT_USER;
            """),
    ]
}
