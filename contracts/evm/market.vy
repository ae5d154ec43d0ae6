# pragma version ~=0.4.3
# pragma evm-version shanghai
# (shanghai: what ganache 7 and most lab nodes execute; cancun adds nothing used here)
"""
@title Dual-bidding community energy market (market.md section 1) on the EVM
@notice The same rules as contracts/dual_bidding.py and contracts/settlement.py, in
        integers: energy in micro-kWh (mWh), prices in micro-AUD per kWh, money in wei.
        Every payment is first rounded half-to-even to a whole micro-ETH (1e12 wei), the
        rounding rule of contracts/numbers.aud_to_micro; a buy order's escrow is rounded up
        (contracts/ledger.escrow_amount).
        One interval: households place orders (a transaction from their own certified
        account, with the account's next order nonce); the operator proposes the two
        priority orders of the book, which the contract checks in linear time (strictly
        sorted, every order once) and then walks itself: fills, volume, method and price
        are the contract's; the operator's oracle account then posts every household's
        metered energy, and the contract pays sellers, charges buyers and settles the rest
        with the grid at the tariffs fixed at deployment.
        Disputes and no credit as contracts/settlement.settle: a household whose reading
        the oracle marks disputed is not settled, every fill it is party to is held
        (unpaid, the buy order's escrow kept), its counterparty still counts the fill as
        cleared; a household's grid import is charged at most what it holds after its
        market payments (the rest is reported unfunded), so no balance goes below zero.
        An interval the operator's process died in before settling is cancelled
        (``cancel``): its orders void, their escrows released, the interval open again.
"""

MAX_SIDE: constant(uint256) = 1024          # orders per side in one interval
MAX_HOUSEHOLDS: constant(uint256) = 2048
MAX_UNITS: constant(uint256) = 10 ** 15     # bound on energy (micro-kWh) and prices
WEI_PER_MICRO: constant(uint256) = 10 ** 12  # 1 micro-ETH
GRID: constant(uint256) = 0                 # the grid's account number
OPEN: constant(uint256) = 0
CLEARED: constant(uint256) = 1

struct Order:
    hid: uint256
    is_buy: bool
    energy: uint256     # micro-kWh
    price: uint256      # micro-AUD per kWh
    escrow: uint256     # wei held until settlement
    filled: uint256     # micro-kWh
    money: uint256      # micro-ETH paid (buyer) or earned (seller)

event Certified:
    hid: indexed(uint256)
    account: address

event Deposit:
    hid: indexed(uint256)
    amount: uint256     # wei

event OrderPlaced:
    interval: indexed(uint256)
    hid: indexed(uint256)
    index: uint256
    is_buy: bool
    energy: uint256
    price: uint256
    nonce: uint256
    escrow: uint256

event Fill:
    interval: indexed(uint256)
    seller: uint256
    buyer: uint256
    energy: uint256     # micro-kWh
    money: uint256      # micro-ETH

event Cleared:
    interval: indexed(uint256)
    method: uint256     # 0 no trade, 1 exact meet (alpha in [L, U]), 2 split marginal order
    price_num: uint256  # price = price_num / price_den micro-AUD per kWh
    price_den: uint256
    volume: uint256     # micro-kWh

event Reading:
    interval: indexed(uint256)
    hid: indexed(uint256)
    metered: int256     # micro-kWh, + exported, - imported

event Transfer:
    interval: indexed(uint256)
    source: uint256     # account numbers, GRID = 0
    target: uint256
    amount: uint256     # wei

event Disputed:
    interval: indexed(uint256)
    hid: indexed(uint256)

event Held:
    interval: indexed(uint256)
    seller: uint256
    buyer: uint256
    energy: uint256     # micro-kWh
    money: uint256      # micro-ETH, not paid

event Unfunded:
    interval: indexed(uint256)
    hid: indexed(uint256)
    amount: uint256     # wei of grid import its balance could not pay

event Cancelled:
    interval: indexed(uint256)
    orders: uint256

event Settled:
    interval: indexed(uint256)

operator: public(address)
alpha_num: public(uint256)
alpha_den: public(uint256)
rate: public(uint256)            # micro-AUD per ETH
import_price: public(uint256)    # micro-AUD per kWh
feed_in_price: public(uint256)   # micro-AUD per kWh

households: public(uint256)
hid_of: public(HashMap[address, uint256])
account_of: public(HashMap[uint256, address])
balance_of: public(HashMap[uint256, int256])   # wei; a debt to the grid may be negative
held: public(HashMap[uint256, uint256])        # wei in escrow
nonce_of: public(HashMap[address, uint256])    # the next order nonce of each account

interval: public(uint256)
phase: public(uint256)
order_count: public(uint256)
buy_count: public(uint256)
sell_count: public(uint256)
orders: public(HashMap[uint256, Order])
placed: HashMap[uint256, uint256]   # hid -> interval + 1 of its last order
order_of: HashMap[uint256, uint256]  # hid -> its order's index in that interval
fill_count: public(uint256)
fills: HashMap[uint256, uint256]     # the interval's fills, packed (_pack_fill)
frozen_at: HashMap[uint256, uint256]  # hid -> interval + 1 whose buy escrow a dispute holds


@deploy
def __init__(alpha_num: uint256, alpha_den: uint256, rate: uint256, import_price: uint256,
             feed_in_price: uint256):
    assert alpha_den > 0 and alpha_num <= alpha_den, "alpha must lie in [0, 1]"
    assert rate > 0 and rate <= MAX_UNITS, "rate out of range"
    assert import_price <= MAX_UNITS and feed_in_price <= MAX_UNITS, "tariff out of range"
    self.operator = msg.sender
    self.alpha_num = alpha_num
    self.alpha_den = alpha_den
    self.rate = rate
    self.import_price = import_price
    self.feed_in_price = feed_in_price


@external
def certify(account: address) -> uint256:
    """The operator certifies a household's account (the paper's Init); numbers 1, 2, ..."""
    assert msg.sender == self.operator, "only the operator certifies"
    assert account != empty(address), "no account"
    assert self.hid_of[account] == 0 and account != self.operator, "already certified"
    assert self.households < MAX_HOUSEHOLDS, "too many households"
    hid: uint256 = self.households + 1
    self.households = hid
    self.hid_of[account] = hid
    self.account_of[hid] = account
    log Certified(hid=hid, account=account)
    return hid


@external
@payable
def deposit():
    """A certified household adds ETH to its balance (the operator funds the grid's)."""
    hid: uint256 = GRID
    if msg.sender != self.operator:
        hid = self.hid_of[msg.sender]
        assert hid != 0, "uncertified: only certified households deposit"
    self.balance_of[hid] += convert(msg.value, int256)
    log Deposit(hid=hid, amount=msg.value)


@external
@payable
def deposit_for(hid: uint256):
    """The operator deposits a household's opening balance on its behalf (a household whose
    HEMS holds its own key: the operator cannot send from that account)."""
    assert msg.sender == self.operator, "only the operator deposits for a household"
    assert hid != 0 and self.account_of[hid] != empty(address), \
        "uncertified: no certified household has this number"
    self.balance_of[hid] += convert(msg.value, int256)
    log Deposit(hid=hid, amount=msg.value)


@external
def withdraw(amount: uint256):
    """A household takes back what it holds beyond its escrow (never in mid-interval debt)."""
    hid: uint256 = self.hid_of[msg.sender]
    assert hid != 0, "uncertified"
    assert self.balance_of[hid] - convert(self.held[hid], int256) >= convert(amount, int256), \
        "withdraw exceeds the available balance"
    self.balance_of[hid] -= convert(amount, int256)
    send(msg.sender, amount)


@internal
@pure
def _round_half_even(num: uint256, den: uint256) -> uint256:
    q: uint256 = num // den
    r: uint256 = num % den
    if 2 * r > den or (2 * r == den and q % 2 == 1):
        q += 1
    return q


@internal
@pure
def _pack_fill(seller: uint256, buyer: uint256, energy: uint256, money: uint256) -> uint256:
    # seller and buyer < 2**12, energy < 2**50 (MAX_UNITS), money < 2**180
    return (seller << 244) | (buyer << 232) | (energy << 180) | money


@external
def place_order(hid: uint256, interval: uint256, nonce: uint256, is_buy: bool, energy: uint256,
                price: uint256) -> uint256:
    """A household's order for the open interval, from its own certified account."""
    assert hid != 0 and self.account_of[hid] != empty(address), \
        "uncertified: no certified household has this number"
    assert self.account_of[hid] == msg.sender, \
        "forged: the sender is not this household's certified account"
    assert nonce == self.nonce_of[msg.sender], "replayed: nonce is not the account's next"
    assert interval == self.interval and self.phase == OPEN, "interval is not open for orders"
    assert self.placed[hid] != interval + 1, "duplicate: one order per household per interval"
    assert energy > 0 and energy <= MAX_UNITS, "energy out of range"
    assert price <= MAX_UNITS, "price out of range"
    escrow: uint256 = 0
    if is_buy:
        assert self.buy_count < MAX_SIDE, "book full"
        escrow = (energy * price + self.rate - 1) // self.rate * WEI_PER_MICRO
        assert self.balance_of[hid] - convert(self.held[hid], int256) >= convert(escrow, int256), \
            "unfunded: the escrow exceeds the available balance"
        self.held[hid] += escrow
        self.buy_count += 1
    else:
        assert self.sell_count < MAX_SIDE, "book full"
        self.sell_count += 1
    index: uint256 = self.order_count
    self.orders[index] = Order(hid=hid, is_buy=is_buy, energy=energy, price=price,
                               escrow=escrow, filled=0, money=0)
    self.order_count = index + 1
    self.placed[hid] = interval + 1
    self.order_of[hid] = index
    self.nonce_of[msg.sender] = nonce + 1
    log OrderPlaced(interval=interval, hid=hid, index=index, is_buy=is_buy, energy=energy,
                    price=price, nonce=nonce, escrow=escrow)
    return index


@internal
@view
def _check_priority(ranks: DynArray[uint256, MAX_SIDE], buy: bool, count: uint256):
    assert len(ranks) == count, "the proposed priority does not hold every order of its side"
    prev: Order = empty(Order)
    for k: uint256 in range(MAX_SIDE):
        if k == len(ranks):
            break
        assert ranks[k] < self.order_count, "no such order"
        o: Order = self.orders[ranks[k]]
        assert o.is_buy == buy, "an order of the other side"
        if k > 0:
            ok: bool = False
            if o.price != prev.price:
                ok = (o.price < prev.price) if buy else (o.price > prev.price)
            elif o.energy != prev.energy:
                ok = o.energy < prev.energy
            else:
                ok = o.hid > prev.hid
            assert ok, "the proposed priority is not the market's"
        prev = o


@external
def clear(buys: DynArray[uint256, MAX_SIDE], sells: DynArray[uint256, MAX_SIDE]):
    """Clear the open interval. ``buys``/``sells``: order indices in priority order (buyers
    highest bid, sellers lowest ask; ties larger energy, then lower household number);
    checked here, then the contract matches, prices and records every fill."""
    assert msg.sender == self.operator, "only the operator closes the book"
    assert self.phase == OPEN, "already cleared"
    self._check_priority(buys, True, self.buy_count)
    self._check_priority(sells, False, self.sell_count)
    nb: uint256 = len(buys)
    ns: uint256 = len(sells)

    # Pass 1: where the crossing stops (reads only).
    i: uint256 = 0
    j: uint256 = 0
    b_left: uint256 = 0
    s_left: uint256 = 0
    if nb > 0:
        b_left = self.orders[buys[0]].energy
    if ns > 0:
        s_left = self.orders[sells[0]].energy
    volume: uint256 = 0
    for _: uint256 in range(2 * MAX_SIDE):
        if i >= nb or j >= ns:
            break
        if self.orders[buys[i]].price < self.orders[sells[j]].price:
            break
        q: uint256 = min(b_left, s_left)
        volume += q
        b_left -= q
        s_left -= q
        if b_left == 0:
            i += 1
            if i < nb:
                b_left = self.orders[buys[i]].energy
        if s_left == 0:
            j += 1
            if j < ns:
                s_left = self.orders[sells[j]].energy

    den: uint256 = self.alpha_den
    method: uint256 = 0
    num: uint256 = 0
    if volume > 0:
        if i < nb and b_left < self.orders[buys[i]].energy:
            method = 2
            num = self.orders[buys[i]].price * den
        elif j < ns and s_left < self.orders[sells[j]].energy:
            method = 2
            num = self.orders[sells[j]].price * den
        else:
            method = 1
            lower: uint256 = self.orders[sells[j - 1]].price
            if i < nb:
                lower = max(lower, self.orders[buys[i]].price)
            upper: uint256 = self.orders[buys[i - 1]].price
            if j < ns:
                upper = min(upper, self.orders[sells[j]].price)
            num = self.alpha_num * upper + (den - self.alpha_num) * lower
    log Cleared(interval=self.interval, method=method, price_num=num, price_den=den,
                volume=volume)

    # Pass 2: the fills at the one price, each paid in whole micro-ETH.
    money_den: uint256 = self.rate * den
    ii: uint256 = 0
    jj: uint256 = 0
    bq: uint256 = 0
    sq: uint256 = 0
    bm: uint256 = 0
    sm: uint256 = 0
    nf: uint256 = 0
    if nb > 0:
        b_left = self.orders[buys[0]].energy
    if ns > 0:
        s_left = self.orders[sells[0]].energy
    for _: uint256 in range(2 * MAX_SIDE):
        if ii >= i and jj >= j and (ii >= nb or jj >= ns or b_left == 0 or s_left == 0):
            break
        if ii >= nb or jj >= ns or volume == 0:
            break
        if self.orders[buys[ii]].price < self.orders[sells[jj]].price:
            break
        q: uint256 = min(b_left, s_left)
        m: uint256 = self._round_half_even(q * num, money_den)
        assert m < 2 ** 180, "fill money out of range"
        seller: uint256 = self.orders[sells[jj]].hid
        buyer: uint256 = self.orders[buys[ii]].hid
        log Fill(interval=self.interval, seller=seller, buyer=buyer, energy=q, money=m)
        self.fills[nf] = self._pack_fill(seller, buyer, q, m)
        nf += 1
        bq += q
        sq += q
        bm += m
        sm += m
        b_left -= q
        s_left -= q
        if b_left == 0:
            self.orders[buys[ii]].filled = bq
            self.orders[buys[ii]].money = bm
            bq = 0
            bm = 0
            ii += 1
            if ii < nb:
                b_left = self.orders[buys[ii]].energy
        if s_left == 0:
            self.orders[sells[jj]].filled = sq
            self.orders[sells[jj]].money = sm
            sq = 0
            sm = 0
            jj += 1
            if jj < ns:
                s_left = self.orders[sells[jj]].energy
    if bq > 0:
        self.orders[buys[ii]].filled = bq
        self.orders[buys[ii]].money = bm
    if sq > 0:
        self.orders[sells[jj]].filled = sq
        self.orders[sells[jj]].money = sm
    self.fill_count = nf
    self.phase = CLEARED


@internal
def _pay(source: uint256, target: uint256, micro: uint256):
    if micro == 0:
        return
    amount: uint256 = micro * WEI_PER_MICRO
    self.balance_of[source] -= convert(amount, int256)
    self.balance_of[target] += convert(amount, int256)
    log Transfer(interval=self.interval, source=source, target=target, amount=amount)


@internal
def _charge(hid: uint256, micro: uint256):
    """Grid import: charged at most what the household holds after its market payments (no
    credit); the rest is logged unfunded (the grid's loss), as contracts.settlement does."""
    if micro == 0:
        return
    amount: uint256 = micro * WEI_PER_MICRO
    balance: int256 = self.balance_of[hid]
    paid: uint256 = amount
    if balance < convert(amount, int256):
        paid = 0
        if balance > 0:
            paid = convert(balance, uint256)
        log Unfunded(interval=self.interval, hid=hid, amount=amount - paid)
    if paid > 0:
        self.balance_of[hid] -= convert(paid, int256)
        self.balance_of[GRID] += convert(paid, int256)
        log Transfer(interval=self.interval, source=hid, target=GRID, amount=paid)


@external
def settle(metered: DynArray[int256, MAX_HOUSEHOLDS],
           disputed: DynArray[bool, MAX_HOUSEHOLDS]):
    """The oracle (operator) posts every household's metered net energy for the cleared
    interval, in micro-kWh (+ exported), household 1 first, and which readings are disputed
    (a meter fault, energy beyond the rig's rating); the contract pays the fills, holding
    those with a disputed party, settles each undisputed deviation with the grid, releases
    the escrows not held and opens the next interval."""
    assert msg.sender == self.operator, "only the operator's oracle posts meter readings"
    assert self.phase == CLEARED, "the interval is not cleared"
    assert len(metered) == self.households, "one reading per certified household"
    assert len(disputed) == self.households, "one dispute flag per certified household"
    iv: uint256 = self.interval
    for k: uint256 in range(MAX_HOUSEHOLDS):
        if k == len(disputed):
            break
        if disputed[k]:
            log Disputed(interval=iv, hid=k + 1)
    # The fills' money, buyer to seller (as contracts.settlement lists them: fills first).
    any_held: bool = False
    for f: uint256 in range(MAX_SIDE * 2):
        if f == self.fill_count:
            break
        packed: uint256 = self.fills[f]
        seller: uint256 = packed >> 244
        buyer: uint256 = (packed >> 232) & 4095
        money: uint256 = packed & (2 ** 180 - 1)
        if disputed[seller - 1] or disputed[buyer - 1]:
            any_held = True
            self.frozen_at[buyer] = iv + 1
            log Held(interval=iv, seller=seller, buyer=buyer,
                     energy=(packed >> 180) & (2 ** 52 - 1), money=money)
        elif money > 0:
            amount: int256 = convert(money * WEI_PER_MICRO, int256)
            self.balance_of[seller] += amount
            self.balance_of[buyer] -= amount
    # Escrows back, except a buy order's that is party to a held fill.
    for k: uint256 in range(MAX_SIDE * 2):
        if k == self.order_count:
            break
        if self.orders[k].is_buy:
            hid: uint256 = self.orders[k].hid
            if not (any_held and self.frozen_at[hid] == iv + 1):
                self.held[hid] -= self.orders[k].escrow
    # The grid: what the meter says beyond what was cleared (a disputed reading: nothing).
    imp: uint256 = self.import_price
    feed: uint256 = self.feed_in_price
    rate: uint256 = self.rate
    for k: uint256 in range(MAX_HOUSEHOLDS):
        if k == len(metered):
            break
        hid: uint256 = k + 1
        m: int256 = metered[k]
        assert m <= convert(MAX_UNITS, int256) and m >= -convert(MAX_UNITS, int256), \
            "reading out of range"
        log Reading(interval=iv, hid=hid, metered=m)
        if disputed[k]:
            continue
        cleared: int256 = 0
        bought: int256 = 0
        if self.placed[hid] == iv + 1:
            o: Order = self.orders[self.order_of[hid]]
            if o.is_buy:
                bought = convert(o.filled, int256)
                cleared = -bought
            else:
                cleared = convert(o.filled, int256)
        deviation: int256 = m - cleared
        if deviation >= 0:
            export: int256 = deviation
            if bought > 0:
                export = max(deviation - bought, 0)
            self._pay(GRID, hid, self._round_half_even(convert(export, uint256) * feed, rate))
        else:
            self._charge(hid, self._round_half_even(convert(-deviation, uint256) * imp, rate))
    log Settled(interval=iv)
    self.interval = iv + 1
    self.phase = OPEN
    self.order_count = 0
    self.buy_count = 0
    self.sell_count = 0
    self.fill_count = 0


@external
def cancel():
    """The operator voids the open interval's book (its process died before settling):
    every order of the interval is void, its escrow released, the fills forgotten, and the
    same interval opens again for orders (the accounts' nonces stay where they are)."""
    assert msg.sender == self.operator, "only the operator cancels an interval"
    n: uint256 = self.order_count
    for k: uint256 in range(MAX_SIDE * 2):
        if k == n:
            break
        o: Order = self.orders[k]
        if o.is_buy:
            self.held[o.hid] -= o.escrow
        self.placed[o.hid] = 0
    log Cancelled(interval=self.interval, orders=n)
    self.phase = OPEN
    self.order_count = 0
    self.buy_count = 0
    self.sell_count = 0
    self.fill_count = 0
