-- Credentials bound to what minted them; upload sessions owned by an account and counted
-- against their namespace's quota while they are written.
-- The PostgreSQL twin of sqlite/0011_credentials.sql.

-- The credential that minted a token, which the token dies with: `token:<id>` (a personal
-- access token or refresh token), or `<password|ldap|saml>:<user id>:<generation>` (a sign-in
-- with that user's credentials of that generation). NULL: made by a full sign-in (console,
-- password), and independent of it.
ALTER TABLE tokens ADD COLUMN minted_by TEXT;
CREATE INDEX tokens_minted_by ON tokens (minted_by);

-- Bumped whenever a user's password changes or the user is disabled: what a sign-in minted
-- names the generation it saw, and stops working when the generation moves on.
ALTER TABLE users ADD COLUMN credential_generation INTEGER NOT NULL DEFAULT 0;

-- Who opened an upload session (`alice`, `robot:team+ci`): open sessions per account are
-- capped (uploads.max_open_per_account). `reserved`: the bytes the session may hold under its
-- namespace's quota, granted ahead of the writes and released with the session.
ALTER TABLE uploads ADD COLUMN owner TEXT;
ALTER TABLE uploads ADD COLUMN reserved BIGINT NOT NULL DEFAULT 0;
CREATE INDEX uploads_owner ON uploads (owner);
