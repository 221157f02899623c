-- What an export billed for a period that had an estimate at either boundary (docs/billing.md,
-- "Estimates and their corrections"): the boundary reads as billed, and which estimates they
-- were. The first export that bills a period on an estimate is the bill; later exports of the
-- period leave it as it is. The corrections report adjusts exactly these bills, one row per
-- estimate superseded since, so a period that was never billed on an estimate (billed after
-- the estimate was superseded, say) is never adjusted.
CREATE TABLE billing_estimated_bills (
    meter_id          text COLLATE "C" NOT NULL REFERENCES meters (meter_id),
    channel           text COLLATE "C" NOT NULL,
    period            text NOT NULL CHECK (period ~ '^[0-9]{4}-(0[1-9]|1[0-2])$'),
    opening_at        timestamptz NOT NULL,
    opening_read      double precision NOT NULL,
    opening_method    text NOT NULL,
    opening_estimate  bigint REFERENCES billing_estimates (id),
    closing_at        timestamptz NOT NULL,
    closing_read      double precision NOT NULL,
    closing_method    text NOT NULL,
    closing_estimate  bigint REFERENCES billing_estimates (id),
    consumption       double precision,  -- as billed (3 places); null: not computable (flagged)
    -- the period's series as the export judged it: a correction judges a wrap the same way
    series_rollovers  integer NOT NULL DEFAULT 0,
    series_rollbacks  integer NOT NULL DEFAULT 0,
    -- when a `--new` corrections report delivered the row for each boundary's estimate
    opening_reported_at timestamptz,
    closing_reported_at timestamptz,
    billed_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (meter_id, channel, period),
    CHECK (opening_estimate IS NOT NULL OR closing_estimate IS NOT NULL),
    CHECK ((opening_estimate IS NOT NULL) = (opening_method = 'estimated')),
    CHECK ((closing_estimate IS NOT NULL) = (closing_method = 'estimated'))
);
CREATE INDEX billing_estimated_bills_opening ON billing_estimated_bills (opening_estimate)
    WHERE opening_estimate IS NOT NULL;
CREATE INDEX billing_estimated_bills_closing ON billing_estimated_bills (closing_estimate)
    WHERE closing_estimate IS NOT NULL;
-- The read that superseded an estimate is the boundary's read from then on: exports look it
-- up per boundary.
CREATE INDEX billing_estimates_settled ON billing_estimates (meter_id, channel, boundary)
    WHERE superseded_at IS NOT NULL;
