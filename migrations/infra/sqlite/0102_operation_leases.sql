-- Which replica runs an unfinished operation, and until when: the holder renews its lease while
-- it works; another replica takes over an operation whose lease ran out (its holder died).
ALTER TABLE operations ADD COLUMN lease_owner TEXT;
ALTER TABLE operations ADD COLUMN lease_until_us BIGINT;

-- One live server per hostname, whatever the number of replicas (its A record and DEPLOY_HOST
-- are that server's).
CREATE UNIQUE INDEX servers_live_hostname ON servers (hostname) WHERE state <> 'destroyed';
