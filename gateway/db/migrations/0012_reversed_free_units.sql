-- A reversed sale gives back the month's free basic units it issued (docs/vending.md,
-- "Reversal and confirmation"): its free basic token keeps the month it was issued for in
-- `fbe_reversed_month` and leaves `fbe_month`, which is what the once-a-month unique index
-- counts, so the next sale or free issue of that month issues them again. Should the meter
-- accept the reversed token after all, the month goes back to it (unless the units were issued
-- again meanwhile) and a revenue-protection case opens, as for any token of a reversed sale.
ALTER TABLE vend_tokens ADD COLUMN fbe_reversed_month date;
ALTER TABLE vend_tokens DROP CONSTRAINT vend_tokens_check;
ALTER TABLE vend_tokens ADD CONSTRAINT vend_tokens_free_basic_month
    CHECK ((kind = 'free_basic') = (fbe_month IS NOT NULL OR fbe_reversed_month IS NOT NULL)
           AND (fbe_month IS NULL OR fbe_reversed_month IS NULL));
-- Sales reversed before this migration give their months back as well (a token a meter has
-- accepted keeps its month: those units are the meter's).
UPDATE vend_tokens t SET fbe_reversed_month = t.fbe_month, fbe_month = NULL
  FROM sales s
 WHERE s.sale_id = t.sale_id AND s.state = 'reversed' AND t.fbe_month IS NOT NULL
   AND t.state <> 'accepted';

-- A case also records the free basic units of the reversed sale its meter accepted, and a case
-- opens for a reversed free issue too, which has no amount to claim.
ALTER TABLE revenue_protection ADD COLUMN free_tenths integer NOT NULL DEFAULT 0;
UPDATE revenue_protection r SET free_tenths = coalesce((
    SELECT sum(t.tenths) FROM vend_tokens t
     WHERE t.sale_id = r.sale_id AND t.kind = 'free_basic' AND t.state = 'accepted'), 0);

-- Lock order, as everywhere else: the token, its sale, the meter's vending row, the vendor
-- (several results in one ingest batch take these per event, in arrival order).
CREATE OR REPLACE FUNCTION vend_token_result() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    t          record;
    s          record;
    token_ref  text := NEW.details ->> 'token_id';
    new_state  text := CASE NEW.type WHEN 'token_accepted' THEN 'accepted' ELSE 'rejected' END;
    last_bal   numeric(14, 2);
    mv_id      bigint;
BEGIN
    IF token_ref IS NULL THEN
        RETURN NULL;
    END IF;
    SELECT vt.* INTO t FROM vend_tokens vt JOIN sales sa USING (sale_id)
     WHERE vt.meter_id = NEW.meter_id
       AND (sa.receipt_no || '-' || vt.seq = token_ref OR vt.token = token_ref)
     ORDER BY vt.token_id DESC LIMIT 1;
    IF NOT FOUND OR t.state IN ('accepted', 'rejected') THEN
        RETURN NULL;
    END IF;
    -- The token as it stands once locked (a reversal, another result may have come first).
    UPDATE vend_tokens SET state = new_state, result_at = NEW.ts,
           reason = NEW.details ->> 'reason'
     WHERE token_id = t.token_id AND state NOT IN ('accepted', 'rejected')
    RETURNING * INTO t;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    SELECT * INTO s FROM sales WHERE sale_id = t.sale_id FOR UPDATE;
    IF new_state = 'rejected' THEN
        IF s.state <> 'reversed' THEN
            UPDATE sales SET state = 'rejected' WHERE sale_id = s.sale_id;
        END IF;
        RETURN NULL;
    END IF;
    IF t.kind = 'key_change' AND NOT EXISTS (
        SELECT 1 FROM vend_tokens WHERE sale_id = t.sale_id AND kind = 'key_change'
           AND state <> 'accepted') THEN
        UPDATE meter_vending SET sgc = t.new_key ->> 'sgc', krn = (t.new_key ->> 'krn')::smallint,
               ti = (t.new_key ->> 'ti')::smallint,
               key_type = (t.new_key ->> 'key_type')::smallint,
               base_date = (t.new_key ->> 'base_date')::smallint,
               target_sgc = NULL, target_ti = NULL, updated_at = now()
         WHERE meter_id = NEW.meter_id;
    END IF;
    IF s.state = 'reversed' THEN
        IF t.kind = 'key_change' THEN
            RETURN NULL;
        END IF;
        -- The meter before the vendor, as a sale locks them.
        PERFORM 1 FROM meter_vending WHERE meter_id = t.meter_id FOR UPDATE;
        -- Any credit or free basic token accepted shows the receipt did reach the customer:
        -- the whole reversal is claimed back, once.
        IF NOT EXISTS (
            SELECT 1 FROM revenue_protection WHERE sale_id = s.sale_id) THEN
            mv_id := NULL;
            IF s.amount > 0 THEN
                PERFORM 1 FROM vendors WHERE vendor = s.vendor FOR UPDATE;
                SELECT balance_after INTO last_bal FROM float_movements
                 WHERE vendor = s.vendor ORDER BY movement_id DESC LIMIT 1;
                INSERT INTO float_movements (vendor, kind, amount, balance_after, sale_id, note)
                VALUES (s.vendor, 'claim', -s.amount, coalesce(last_bal, 0) - s.amount,
                        s.sale_id,
                        'token of reversed sale ' || s.receipt_no || ' accepted by the meter')
                RETURNING movement_id INTO mv_id;
            END IF;
            INSERT INTO revenue_protection (sale_id, vendor, meter_id, amount, movement_id)
            VALUES (s.sale_id, s.vendor, s.meter_id, s.amount, mv_id);
        END IF;
        IF t.kind = 'free_basic' THEN
            UPDATE revenue_protection SET free_tenths = free_tenths + coalesce(t.tenths, 0)
             WHERE sale_id = s.sale_id;
            -- The meter has these units: unless they were issued again meanwhile, they are
            -- the month's allocation after all. The meter's row lock keeps a sale from issuing
            -- them between the check and the update.
            UPDATE vend_tokens SET fbe_month = fbe_reversed_month, fbe_reversed_month = NULL
             WHERE token_id = t.token_id AND fbe_reversed_month IS NOT NULL
               AND NOT EXISTS (SELECT 1 FROM vend_tokens o WHERE o.meter_id = t.meter_id
                                  AND o.fbe_month = t.fbe_reversed_month);
        END IF;
        RETURN NULL;
    END IF;
    IF s.state <> 'rejected' AND NOT EXISTS (
        SELECT 1 FROM vend_tokens WHERE sale_id = s.sale_id AND state <> 'accepted') THEN
        UPDATE sales SET state = 'accepted' WHERE sale_id = s.sale_id;
    END IF;
    RETURN NULL;
END
$$;
