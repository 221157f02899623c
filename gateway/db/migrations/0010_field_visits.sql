-- What a field visit needs: where the meter is (address, suburb or area, coordinates), and the
-- idempotency keys of state-changing requests, so an action replayed (a phone that queued it
-- offline and sends it again) takes effect once.

ALTER TABLE meters
    ADD COLUMN address   text CHECK (length(address) <= 300),
    ADD COLUMN area      text CHECK (length(area) <= 100),
    ADD COLUMN latitude  double precision CHECK (latitude BETWEEN -90 AND 90),
    ADD COLUMN longitude double precision CHECK (longitude BETWEEN -180 AND 180),
    ADD CONSTRAINT meters_coordinates_paired CHECK ((latitude IS NULL) = (longitude IS NULL));
CREATE INDEX meters_area ON meters (area) WHERE area IS NOT NULL;

-- One row per principal and idempotency key: 'pending' while the first request runs, then its answer.
CREATE TABLE idempotency_keys (
    owner       text COLLATE "C" NOT NULL,
    key         text COLLATE "C" NOT NULL CHECK (key ~ '^[A-Za-z0-9_.:-]{8,100}$'),
    method      text NOT NULL,
    path        text NOT NULL,
    state       text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'done')),
    status      integer,
    media_type  text,
    body        bytea,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (owner, key)
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);
