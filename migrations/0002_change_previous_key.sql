-- The endpoint key an entity had before each change, so nodes can update key indexes in place.
ALTER TABLE changes ADD COLUMN previous_key TEXT;
