"""The grammar of :mod:`gptcourse.stories`: its choice tables and the program that tells a story.

:func:`story` is the whole grammar: an opening (a hero -- a child or an animal, always named,
with pronouns that agree --, a home, something the hero likes), then one of six plots (a lost
toy, a goal with an obstacle, helping a sad stranger, sharing food, a fear overcome, a day
out) and ``The end.``. It runs on either chooser of :mod:`gptcourse.stories_engine` (writing or
reading). The upper-case tables (``NAMES``, ``TOY``, ``ACTIVITY``, ...) hold the options and
their weights; lessons read them for true probabilities, as ``gptcourse.stories.NAMES`` etc.
"""

from __future__ import annotations

from .stories_engine import SLOTS, T, Table, cap, slot

# ======================================================================================
# People: names, species, pronouns, helpers
# ======================================================================================

PRONOUNS = {
    "f": {"he": "she", "his": "her", "him": "her", "self": "herself"},
    "m": {"he": "he", "his": "his", "him": "him", "self": "himself"},
}


def _person(c: dict, prefix: str, name: str, gender: str) -> None:
    """Bind a character's name and pronouns (probability 1 from here on).

    The hero (prefix ""): ``{H}``, ``{he}``/``{He}``, ``{his}``/``{His}``, ``{him}``, ``{self}``;
    the helper (prefix "f"): ``{F}``, ``{fhe}``/``{Fhe}``, ``{fhis}``, ...; another character
    (prefix "n"): ``{N}``, ``{nhe}``/``{Nhe}``, ...
    """
    c[prefix.upper() or "H"] = name
    for key, word in PRONOUNS[gender].items():
        c[prefix + key] = word
        c[prefix.upper() + key if prefix else key.capitalize()] = word.capitalize()
    c.setdefault("_used", set()).add(name)


_GIRLS = [("Lily", 9), ("Mia", 6), ("Lucy", 5), ("Emma", 5), ("Anna", 4), ("Sue", 3), ("Rose", 3),
          ("Ella", 3), ("Amy", 3), ("Kate", 2), ("Zoe", 2), ("Ruby", 2), ("Ivy", 2), ("Nora", 2),
          ("Daisy", 2), ("Molly", 2)]
_BOYS = [("Tom", 9), ("Ben", 7), ("Sam", 5), ("Max", 5), ("Jack", 4), ("Leo", 3), ("Tim", 3),
         ("Finn", 3), ("Jake", 2), ("Noah", 2), ("Dan", 2), ("Owen", 2), ("Luke", 2), ("Ned", 2),
         ("Joe", 2), ("Bob", 2)]
NAMES_F = T(*[(n, w, "f") for n, w in _GIRLS])
NAMES_M = T(*[(n, w, "m") for n, w in _BOYS])
NAMES = T(*[(n, w, "f") for n, w in _GIRLS], *[(n, w, "m") for n, w in _BOYS])

# species word, weight, (gender it forces or None, home group, body part for "hurt my ...")
_SPECIES = [
    ("girl", 7, ("f", "kid")), ("boy", 7, ("m", "kid")),
    ("rabbit", 4, (None, "burrow")), ("bunny", 2, (None, "burrow")),
    ("cat", 3, (None, "house")), ("kitten", 2, (None, "house")),
    ("dog", 3, (None, "house")), ("puppy", 2, (None, "house")),
    ("bear", 2, (None, "woods")), ("fox", 1, (None, "woods")),
    ("duck", 2, (None, "pond")), ("frog", 1, (None, "pond")),
    ("mouse", 2, (None, "mouse")), ("squirrel", 1, (None, "tree")), ("bird", 1, (None, "tree")),
    ("lamb", 1, (None, "farm")), ("pig", 1, (None, "farm")),
]
SPECIES = T(*_SPECIES)
SPECIES_F = T(*[r for r in _SPECIES if r[0] != "boy"])
SPECIES_M = T(*[r for r in _SPECIES if r[0] != "girl"])

ADJ = T(("little", 8), ("small", 3), ("happy", 3), ("curious", 2), ("brave", 1), ("shy", 1),
        ("kind", 2), ("playful", 1), ("clever", 1), ("funny", 1))


@slot("adj")
def _adj(w, c):
    i = w.pick(ADJ, c)
    c["adj"] = ADJ.texts[i]


@slot("species")
def _species(w, c):
    """Species before the name: forces the name's gender for "girl" and "boy"."""
    i = w.pick(SPECIES, c)
    c["sp"], (c["_g"], c["_home"]) = SPECIES.texts[i], SPECIES.data[i]


@slot("hero_name")
def _hero_name(w, c):
    t = {"f": NAMES_F, "m": NAMES_M, None: NAMES}[c["_g"]]
    i = w.pick(t, c)
    _person(c, "", t.texts[i], t.data[i])


@slot("name_first")
def _name_first(w, c):
    i = w.pick(NAMES, c)
    _person(c, "", NAMES.texts[i], NAMES.data[i])


@slot("species_g")
def _species_g(w, c):
    """Species after the name: only the animals or the child word of the name's gender."""
    t = SPECIES_F if c["he"] == "she" else SPECIES_M
    i = w.pick(t, c)
    c["sp"], c["_home"] = t.texts[i], t.data[i][1]


def _other_name(w, c, prefix: str, gender: str | None):
    t = {"f": NAMES_F, "m": NAMES_M, None: NAMES}[gender].without(frozenset(c["_used"]))
    i = w.pick(t, c)
    _person(c, prefix, t.texts[i], t.data[i])


@slot("friend_name")
def _friend_name(w, c):
    _other_name(w, c, "f", None)


@slot("other")
def _other(w, c):
    """A new character: "<a little> <species> named <Name>" (names other than those used)."""
    i = w.pick(SPECIES, c)
    c["nsp"] = SPECIES.texts[i]
    w.say(" named ")
    _other_name(w, c, "n", SPECIES.data[i][0])


@slot("other_friend")
def _other_friend(w, c):
    _other_name(w, c, "n", None)


# Helpers: intro text (mid-sentence), weight, (how they are called later, gender).
# A friend's name is a slot; the friend's name is then how they are called.
_HELPERS = [
    ("{his} mom", 6, ("Mom", "f")),
    ("{his} dad", 5, ("Dad", "m")),
    ("{his} grandma", 3, ("Grandma", "f")),
    ("{his} grandpa", 3, ("Grandpa", "m")),
    ("{his} big sister <sister_name>", 1, None),
    ("{his} friend <friend_name>", 5, None),
    ("{his} best friend <friend_name>", 2, None),
    ("old Mr. Owl", 2, ("Mr. Owl", "m")),
    ("kind Mrs. Goose", 1, ("Mrs. Goose", "f")),
]
_FAMILY = _HELPERS[:5]  # mom, dad, grandma, grandpa, big sister
HELPER = T(*_HELPERS)
HELPER_CAP = T(*[(cap(t), w, d) for t, w, d in _HELPERS])
FAMILY = T(*_FAMILY)
FAMILY_CAP = T(*[(cap(t), w, d) for t, w, d in _FAMILY])


@slot("sister_name")
def _sister_name(w, c):
    _other_name(w, c, "f", "f")


def _helper(w, c, t: Table) -> None:
    i = w.pick(t, c)
    d = t.data[i]
    if d is not None:
        _person(c, "f", d[0], d[1])


@slot("helper")
def _helper_lc(w, c):
    _helper(w, c, FAMILY if c.get("_indoors") else HELPER)


@slot("Helper")
def _helper_uc(w, c):
    _helper(w, c, FAMILY_CAP if c.get("_indoors") else HELPER_CAP)


@slot("family")
def _family_lc(w, c):
    _helper(w, c, FAMILY)


@slot("Family")
def _family_uc(w, c):
    _helper(w, c, FAMILY_CAP)


# ======================================================================================
# Opening: who, where, what they like
# ======================================================================================

OPENING = T(
    ("Once upon a time, there was a <adj> <species> named <hero_name>.", 7),
    ("There once was a <adj> <species> named <hero_name>.", 3),
    ("Once upon a time, in <village>, there lived a <adj> <species> named <hero_name>.", 2, "in"),
    ("<name_first> was a <adj> <species_g>.", 3),
    ("Long ago, there lived a <adj> <species> named <hero_name>.", 1),
    ("One sunny morning, a <adj> <species> named <hero_name> woke up early.", 1),
)
VILLAGE = T(("a small village", 3), ("a big green forest", 2), ("a quiet little town", 2),
            ("a valley full of flowers", 1), ("a land far away", 1))


@slot("village")
def _village(w, c):
    w.pick(VILLAGE, c)


HOMES = {
    "kid": T(("in a small house near the woods", 3), ("in a little blue house", 3),
             ("on a farm", 1), ("in a busy town", 1), ("near the sea", 1)),
    "burrow": T(("in a cozy hole under a big tree", 3), ("at the edge of the forest", 2),
                ("in a green meadow", 2)),
    "house": T(("in a little yellow house", 3), ("in a cozy house on a quiet street", 2),
               ("on a farm", 1)),
    "woods": T(("in a big cave in the forest", 2), ("deep in the woods", 3)),
    "pond": T(("by a quiet pond", 3), ("near a big green pond", 2)),
    "mouse": T(("in a tiny hole in the wall", 3), ("under the old barn", 2)),
    "tree": T(("in a tall oak tree", 3), ("in a nest high in a tree", 1)),
    "farm": T(("on a big farm", 3), ("on a farm near the hills", 2)),
}


@slot("home")
def _home(w, c):
    w.pick(HOMES[c["_home"]], c)


HOME = T(("{He} lived <home>.", 4), ("{H} lived <home> with {his} mom and dad.", 3), ("", 4))
LIKES = T(
    ("{He} loved to <activity>.", 4),
    ("Every day, {H} liked to <activity>.", 3),
    ("{H} liked to <activity> more than anything.", 2),
    ("More than anything, {H} loved to <activity>.", 1),
    ("{He} was always happy when {he} could <activity>.", 1),
)
ACTIVITY = T(("play outside", 5), ("run and jump", 3), ("sing songs", 2),
             ("play with {his} friends", 4), ("look at the clouds", 2), ("pick flowers", 2),
             ("climb trees", 1), ("dance", 1), ("read books", 1), ("play games", 2),
             ("help {his} mom", 1), ("splash in puddles", 1))


@slot("activity")
def _activity(w, c):
    w.pick(ACTIVITY, c)


def _opening(w, c: dict) -> None:
    i = w.sent(OPENING, c)
    if OPENING.data[i] != "in":
        w.sent(HOME, c)
    w.sent(LIKES, c)


# ======================================================================================
# Shared steps
# ======================================================================================

COLOR = T(("red", 5), ("blue", 4), ("yellow", 3), ("green", 2), ("pink", 2), ("purple", 1))
TOY = T(("ball", 5), ("kite", 3), ("teddy bear", 4), ("toy boat", 2), ("hat", 2), ("doll", 2),
        ("drum", 1), ("scarf", 1), ("toy car", 2))


@slot("toy")
def _toy(w, c):
    """ "<color> <toy>", remembered as {color} and {toy}."""
    c["color"] = COLOR.texts[w.pick(COLOR, c)]
    w.say(" ")
    c["toy"] = TOY.texts[w.pick(TOY, c)]


FEEL_SAD = T(("{H} felt very sad.", 4), ("{H} sat down and began to cry.", 3),
             ("Tears rolled down {his} cheeks.", 1), ("{H} did not know what to do.", 2))
ARRIVE = T(("Just then, <helper> came by.", 4), ("Then <helper> saw {him}.", 2),
           ("<Helper> came to see what was wrong.", 3))
ASK = T(('"Why are you sad, {H}?" asked {F}.', 3), ('{F} asked, "What is wrong?"', 2),
        ('"What happened?" {fhe} asked.', 1))
THANKS = T(('{H} was so happy. "Thank you, {F}!" {he} said.', 4),
           ('{H} hugged {F}. "Thank you so much!" {he} said.', 2),
           ("{H} jumped with joy and thanked {F}.", 2),
           ('{H} smiled from ear to ear. "You are the best, {F}!" {he} said.', 1))


# ======================================================================================
# Plot 1: the lost toy
# ======================================================================================

LOST_SETUP = T(("{H} had a <toy>. {He} loved it very much.", 3),
               ("{His} favorite toy was a <toy>.", 3),
               ("For {his} birthday, {his} grandma gave {him} a <toy>.", 2),
               ("{H} had a <toy> that {he} took everywhere.", 2))
LOST_PLAY = T(("Every day, {he} played with {his} {toy}.", 2), ("", 3),
              ("{He} never went anywhere without it.", 1))
LOST_PLAY_SHORT = T(("Every day, {he} played with it.", 2), ("", 3))  # after "took everywhere"
# where it went missing: (form, weight, place key)
LOST_WHEN = T(
    ("One day, {H} went to <place> to play with {his} {toy}. When it was time to go home, the {toy} was gone!", 3),
    ("One morning, {H} looked for {his} {toy}, but {he} could not find it anywhere.", 2, "home"),
    ("One day, {H} played with {his} {toy} <in_place>. Then {he} stopped for a snack. When {he} came back, the {toy} was not there!", 2),
)
_PLACES = [("park", 4, "in"), ("garden", 4, "in"), ("beach", 2, "on"), ("meadow", 2, "in"),
           ("forest", 2, "in")]
PLACE = T(*[("the " + p, w, p) for p, w, _ in _PLACES])  # "went to the beach"
IN_PLACE = T(*[(f"{at} the {p}", w, p) for p, w, at in _PLACES])  # "played on the beach"
SPOTS = {
    "home": T(("under the bed", 3), ("behind the sofa", 2), ("in the toy box", 2),
              ("under the table", 2), ("behind the door", 1), ("in the kitchen", 1)),
    "park": T(("under the bench", 3), ("behind the big tree", 2), ("near the slide", 2),
              ("in the tall grass", 2), ("by the pond", 1)),
    "garden": T(("under the bushes", 3), ("behind the fence", 2), ("among the flowers", 2),
                ("near the old shed", 1), ("by the apple tree", 2)),
    "beach": T(("behind a big rock", 3), ("under a pile of sand", 2), ("near the water", 2),
               ("by the old boat", 1)),
    "meadow": T(("in the tall grass", 3), ("under a bush", 2), ("near the stream", 2),
                ("by a big rock", 1)),
    "forest": T(("under a log", 3), ("behind a tree", 2), ("in a pile of leaves", 2),
                ("near the stream", 1)),
}


@slot("place")
def _place(w, c):
    c["_place"] = PLACE.data[w.pick(PLACE, c)]


@slot("in_place")
def _in_place(w, c):
    c["_place"] = IN_PLACE.data[w.pick(IN_PLACE, c)]


def _spot(w, c):
    t = SPOTS[c["_place"]]
    seen = c.setdefault("_seen", set())
    if seen:
        t = t.without(frozenset(seen))
    seen.add(t.texts[w.pick(t, c)])


SLOTS["spot"] = _spot

LOST_SEARCH = T(("{He} looked <spot>. {He} looked <spot>. But the {toy} was not there.", 3),
                ("{H} looked <spot> and <spot>, but {he} could not find it.", 2),
                ("{He} searched everywhere, but the {toy} was nowhere to be found.", 1))
LOST_ANSWER = T(('"I lost my {toy}," said {H}.', 3),
                ('"I can\'t find my {color} {toy}," {H} said sadly.', 2))
LOST_OFFER = T(('"Don\'t worry. I will help you look," said {F}.', 3),
               ('"Let\'s look together," said {F}.', 2),
               ('{F} smiled. "Two can look better than one," {fhe} said.', 1))
LOST_FOUND = T(("They looked everywhere. At last, {F} found the {toy} <spot>!", 3),
               ("They looked and looked. Then {H} saw something {color} <spot>. It was {his} {toy}!", 2),
               ("Together they looked <spot>, and there it was!", 2))
LOST_END = T(("From that day on, {H} always took good care of {his} {toy}.", 3),
             ("After that, {H} never lost {his} {toy} again.", 2),
             ("That night, {H} went to sleep with {his} {toy} right next to {him}.", 2))


def _plot_lost(w, c):
    i = w.sent(LOST_SETUP, c)
    w.sent(LOST_PLAY_SHORT if "everywhere" in LOST_SETUP.texts[i] else LOST_PLAY, c)
    w.para()
    i = w.sent(LOST_WHEN, c)
    if LOST_WHEN.data[i] == "home":
        c["_place"], c["_indoors"] = "home", True
    w.sent(LOST_SEARCH, c)
    w.sent(FEEL_SAD, c)
    w.para()
    w.sent(ARRIVE, c)
    w.sent(ASK, c)
    w.sent(LOST_ANSWER, c)
    w.sent(LOST_OFFER, c)
    w.sent(LOST_FOUND, c)
    w.para()
    w.sent(THANKS, c)
    w.sent(LOST_END, c)


# ======================================================================================
# Plot 2: a goal, an obstacle, a helper
# ======================================================================================

GOAL = T(
    ("One windy day, {H} wanted to fly {his} new kite.", 2, "kite"),
    ("{H} got a new kite. {He} wanted to fly it high in the sky.", 2, "kite"),
    ("{H} saw a big apple tree. {He} wanted to pick a red apple.", 2, "apple"),
    ("There was a tall apple tree near {his} home. {H} wanted an apple more than anything.", 1, "apple"),
    ("{H} wanted to see the pretty flowers on the other side of the river.", 2, "river"),
    ("One sunny day, {H} went to the beach. {He} wanted to build a big sand castle.", 2, "castle"),
    ("{H} wanted to bake a cake for the big party.", 2, "cake"),
    ("{H} wanted to climb the big hill and see the whole valley from the top.", 2, "hill"),
    ("{H} got a new bike. {He} wanted to ride it all by {self}.", 2, "bike"),
)
# per goal: problem, tries, what the hero says, the help, the success, a closing line
GOALS = {
    "kite": dict(
        problem=T(("{He} ran across the field, but the kite fell down.", 2),
                  ("But every time {he} tried, the kite fell to the ground.", 2)),
        tries=T(("{He} tried again and again. It was no use.", 2), ("", 1)),
        says=T(('"My kite will not fly," said {H}.', 1), ('"I can\'t make it fly," said {H}.', 1)),
        help=T(('{F} said, "Run into the wind and let the string out slowly."', 2),
               ('{F} held the kite up high and said, "Now run!"', 2)),
        win=T(("{H} ran as fast as {he} could. Up, up went the kite, high into the sky!", 2),
              ("This time, the kite caught the wind and flew over the trees.", 2)),
        end=T(("{H} and {F} watched the kite dance in the sky until the sun went down.", 1),
              ("", 1)),
    ),
    "apple": dict(
        problem=T(("But the apples were too high.", 2), ("But {he} was too small to reach them.", 2)),
        tries=T(("{He} jumped and jumped, but {he} could not reach.", 2),
                ("{He} stood on {his} toes, but it was no use.", 1), ("", 1)),
        says=T(('"The apples are too high for me," said {H}.', 1),
               ('"I can\'t reach them," said {H}.', 1)),
        help=T(("{F} lifted {him} up high.", 2), ("{F} brought a ladder and held it steady.", 1),
               ("{F} shook the tree, and three apples fell down.", 1)),
        win=T(("{H} picked the biggest, reddest apple.", 2),
              ("Soon {H} had a big red apple in {his} hands.", 2)),
        end=T(("They sat under the tree and ate apples together.", 2), ("", 1)),
    ),
    "river": dict(
        problem=T(("But the water was deep and fast.", 2), ("But there was no bridge.", 2)),
        tries=T(("{He} put one foot in the water, but it was too cold.", 1),
                ("{He} walked up and down the river, but {he} could not find a way across.", 2),
                ("", 1)),
        says=T(('"I can\'t get across," said {H}.', 1),
               ('"How can I get to the other side?" said {H}.', 1)),
        help=T(("{F} showed {him} some big flat stones in the water.", 2),
               ("{F} pushed a long log over the water to make a bridge.", 2)),
        win=T(("Step by step, {H} crossed the river.", 2),
              ("{H} walked carefully across and reached the other side.", 2)),
        end=T(("The flowers were even prettier up close.", 2),
              ("{H} picked a flower for {F}.", 1)),
    ),
    "castle": dict(
        problem=T(("But every time {he} built it, a wave came and washed it away.", 3),
                  ("But the sand was too dry, and the castle fell down.", 1)),
        tries=T(("{He} built it again and again.", 1), ("", 1)),
        says=T(('"My castle keeps falling down," said {H}.', 1),
               ('"I will never build a castle," said {H}.', 1)),
        help=T(('{F} said, "Build it higher up, where the waves can\'t reach, and use wet sand."', 2),
               ("{F} showed {him} how to pat the wet sand until it was hard.", 2)),
        win=T(("Soon there was a tall castle with four towers.", 2),
              ("Together they built the biggest castle on the beach.", 2)),
        end=T(("{H} put a shell on the top of the tallest tower.", 1), ("", 1)),
    ),
    "cake": dict(
        problem=T(("But {he} did not know how.", 2),
                  ("But the flour went everywhere, and the cake was flat.", 2)),
        tries=T(("{He} tried again, but the cake was still flat.", 1), ("", 2)),
        says=T(('"I don\'t know how to make a cake," said {H}.', 1),
               ('"My cake is all wrong," said {H}.', 1)),
        help=T(("{F} showed {him} how to mix the eggs, milk and flour.", 2),
               ('{F} said, "Let\'s read the recipe together, one step at a time."', 2)),
        win=T(("The cake came out of the oven, big and sweet.", 2),
              ("Soon the cake was ready. It smelled wonderful.", 2)),
        end=T(("Everyone at the party said it was the best cake ever.", 2), ("", 1)),
    ),
    "hill": dict(
        problem=T(("But the hill was very steep.", 2), ("Halfway up, {his} legs got very tired.", 2)),
        tries=T(('{He} sat down on a rock. "I can\'t do it," {he} said.', 2), ("", 1)),
        says=T(('"The top is too far," said {H}.', 1), ('"I want to go home," said {H}.', 1)),
        help=T(('{F} said, "Let\'s rest a little, then go slowly, one step at a time."', 2),
               ('{F} took {his} hand and said, "You can do it!"', 2)),
        win=T(("At last, they reached the top.", 2), ("Step by step, they climbed to the top.", 2)),
        end=T(("The sky was big and blue, and {H} could see the whole valley.", 2),
              ("From the top, the houses looked as small as toys.", 1)),
    ),
    "bike": dict(
        problem=T(("But every time {he} tried, {he} fell over.", 3),
                  ("But the bike wobbled, and {he} fell down.", 1)),
        tries=T(("{He} tried again and again.", 1), ("", 1)),
        says=T(('"I will never learn," said {H}.', 1), ('"It is too hard," said {H}.', 1)),
        help=T(("{F} held the back of the bike and ran next to {him}.", 2),
               ('{F} said, "Look ahead, not down, and keep pedaling."', 2)),
        win=T(("Soon {H} was riding all by {self}!", 2),
              ("{H} pedaled faster and faster, all the way down the path.", 2)),
        end=T(("{H} rang the bell. Ring, ring!", 1), ("", 2)),
    ),
}
GOAL_STUCK = T(("{H} felt sad.", 2), ("{H} wanted to give up.", 2), ("{H} did not know what to do.", 1))
GOAL_MORAL = T(("{H} learned that it is good to ask for help.", 3),
               ("{H} learned to never give up.", 3),
               ("{H} was very proud of {self}.", 2),
               ("It was the best day ever.", 1))


def _plot_goal(w, c):
    w.para()
    g = GOALS[GOAL.data[w.sent(GOAL, c)]]
    w.sent(g["problem"], c)
    w.sent(g["tries"], c)
    w.sent(GOAL_STUCK, c)
    w.para()
    w.sent(ARRIVE, c)
    w.sent(ASK, c)
    w.sent(g["says"], c)
    w.sent(g["help"], c)
    w.sent(g["win"], c)
    w.para()
    w.sent(THANKS, c)
    w.sent(g["end"], c)
    w.sent(GOAL_MORAL, c)


# ======================================================================================
# Plot 3: helping someone who is sad
# ======================================================================================

HELP_GO = T(("One day, {H} went for a walk <in_place>.", 3),
            ("One sunny morning, {H} was playing <in_place>.", 2),
            ("One afternoon, {H} went to <place> to play.", 2))
HELP_NOTICE = T(("Suddenly, {he} heard someone crying.", 3),
                ("Then {he} saw someone sitting all alone.", 2))
HELP_MEET = T(("It was a little <other>.", 3), ("{He} went closer and saw a small <other>.", 2))
HELP_ASK = T(('"Why are you sad?" asked {H}.', 3), ('{H} asked, "What is wrong?"', 2),
             ('"Are you all right?" asked {H}.', 1))
HELP_WHY = T(
    ('"I can\'t find my way home," said {N}.', 3, "home"),
    ('"I fell and hurt my leg," said {N}.', 2, "hurt"),
    ('"I have no one to play with," said {N}.', 3, "alone"),
    ('"My <ntoy> is stuck up in the tree," said {N}.', 2, "stuck"),
)
HELP_DO = {
    "home": T(('{H} took {N}\'s hand. "I will help you," {he} said.', 2),
              ('"Don\'t cry. We will find it together," said {H}.', 2)),
    "hurt": T(("{H} helped {N} stand up. Slowly, they walked to {N}'s house.", 2),
              ('"Lean on me," said {H}, and they walked slowly to {N}\'s house.', 2)),
    "alone": T(('"You can play with me!" said {H}.', 3), ('{H} smiled. "Let\'s play together," {he} said.', 2)),
    "stuck": T(("{H} found a long stick and gently pushed the {ntoy} down.", 2),
               ("{H} climbed up the tree and got the {ntoy}.", 2)),
}
HELP_THEN = {
    "home": T(("They walked along the path until they saw a little house with a green door.", 2),
              ("They walked past the big tree and over the hill, and there was {N}'s house.", 2)),
    "hurt": T(("{N}'s mom put a bandage on the leg. Soon {N} felt much better.", 2),
              ("{N}'s mom gave them warm milk, and soon the leg did not hurt anymore.", 1)),
    "alone": T(("They played <game> all afternoon.", 3), ("They laughed and played <game> until the sun went down.", 2)),
    "stuck": T(("{N} was so happy to have {nhis} {ntoy} back.", 2), ('"Thank you!" said {N}, and {nhe} hugged the {ntoy}.', 2)),
}
HELP_HOME_END = T(("{N}'s mom was waiting at the door. She gave {H} a big hug.", 2),
                  ('"Thank you for helping {N}," said {N}\'s mom.', 2))
GAME = T(("tag", 3), ("hide and seek", 3), ("catch", 2), ("with a big red ball", 1))
HELP_END = T(("From that day on, {H} and {N} were best friends.", 4),
             ("{H} and {N} became good friends and played together every day.", 3),
             ("{H} felt warm and happy inside. Helping others felt good.", 2))


@slot("game")
def _game(w, c):
    w.pick(GAME, c)


STUCK_TOY = T(("kite", 3), ("ball", 3), ("hat", 2), ("scarf", 1), ("balloon", 2))


@slot("ntoy")
def _ntoy(w, c):
    c["ntoy"] = STUCK_TOY.texts[w.pick(STUCK_TOY, c)]


def _plot_help(w, c):
    w.para()
    w.sent(HELP_GO, c)
    w.sent(HELP_NOTICE, c)
    w.sent(HELP_MEET, c)
    w.sent(HELP_ASK, c)
    why = HELP_WHY.data[w.sent(HELP_WHY, c)]
    w.para()
    w.sent(HELP_DO[why], c)
    w.sent(HELP_THEN[why], c)
    if why == "home":
        w.sent(HELP_HOME_END, c)
    w.para()
    w.sent(HELP_END, c)


# ======================================================================================
# Plot 4: sharing
# ======================================================================================

# food: text, weight, (short name, "it"/"them", "That ... looks"/"Those ... look")
FOOD = T(("a big red apple", 3, ("apple", "it", "That apple looks")),
         ("three yummy cookies", 3, ("cookies", "them", "Those cookies look")),
         ("a bag of sweet berries", 2, ("berries", "them", "Those berries look")),
         ("a piece of chocolate cake", 2, ("cake", "it", "That cake looks")),
         ("a warm muffin", 1, ("muffin", "it", "That muffin looks")),
         ("a big bunch of grapes", 1, ("grapes", "them", "Those grapes look")))


@slot("food")
def _food(w, c):
    i = w.pick(FOOD, c)
    c["food"], c["it"], c["That"] = FOOD.data[i]


SHARE_HAVE = T(("One day, {H}'s mom gave {him} <food>.", 3),
               ("{H} found <food> on the kitchen table.", 2),
               ("After school, {H} had <food> for a snack.", 1),
               ("{H}'s grandpa gave {him} <food> as a treat.", 2))
SHARE_FRIEND = T(("{He} was about to eat {it} when {his} friend <other_friend> came by.", 3),
                 ("Just then, {his} friend <other_friend> came to play.", 2))
SHARE_LOOK = T(('"{That} yummy," said {N}. {Nhe} was very hungry.', 3),
               ("{N} looked at the {food}. {Nhe} had not eaten all day.", 2))
SHARE_CHOICE = T(
    ('{H} smiled and said, "Let\'s share!" {He} gave half to {N}.', 3),
    ("At first, {H} did not want to share. {He} wanted the {food} all for {self}. But then {he} saw how sad {N} looked. \"Here, let's share,\" said {H}.", 2),
    ('"You can have some," said {H}, and {he} gave {N} the biggest part.', 2),
)
SHARE_TOGETHER = T(("They sat under a tree and ate together.", 3),
                   ("They ate and laughed and talked.", 2), ("", 2))
SHARE_BACK = T(("The next day, {N} brought <food2> to share with {H}.", 3),
               ("", 2))


@slot("food2")
def _food2(w, c):
    t = FOOD.without(frozenset(r for r, d in zip(FOOD.texts, FOOD.data) if d[0] == c["food"]))
    w.pick(t, c)


SHARE_END = T(("{H} learned that sharing makes everyone happy.", 3),
              ("Sharing with a friend made the {food} taste even better.", 2),
              ("From that day on, {H} and {N} always shared their snacks.", 2))


def _plot_share(w, c):
    w.para()
    w.sent(SHARE_HAVE, c)
    w.sent(SHARE_FRIEND, c)
    w.sent(SHARE_LOOK, c)
    w.para()
    w.sent(SHARE_CHOICE, c)
    w.sent(SHARE_TOGETHER, c)
    w.sent(SHARE_BACK, c)
    w.para()
    w.sent(SHARE_END, c)


# ======================================================================================
# Plot 5: a fear
# ======================================================================================

FEAR = T(("{H} was afraid of the dark.", 3, "dark"),
         ("Every night, when the lights went out, {H} felt scared.", 2, "dark"),
         ("{H} was afraid of thunder.", 2, "thunder"),
         ("There was a big dog next door, and {H} was scared of it.", 2, "dog"),
         ("{H} was afraid of the deep water at the lake.", 2, "water"))
FEARS = {
    "dark": dict(
        scene=T(("One night, {H} woke up. The room was very dark.", 2),
                ("One night, {H} could not sleep. Everything was dark and quiet.", 2)),
        react=T(("{He} thought {he} saw a monster in the corner!", 2),
                ("Something in the corner looked like a big monster!", 1)),
        call=T(('"Help!" {he} cried.', 2), ("{He} hid under {his} blanket.", 2)),
        comfort=T(('{F} turned on the light. The monster was just a pile of clothes! "See? There is nothing to be scared of," said {F}.', 2),
                  ('{F} gave {him} a little night light. "Now you can see that your room is safe," {fhe} said.', 2)),
        brave=T(("{H} took a deep breath and closed {his} eyes.", 2), ("{H} smiled and snuggled into bed.", 2)),
        end=T(("After that night, {H} was not afraid of the dark anymore.", 3),
              ("From then on, the dark did not seem so scary.", 2)),
    ),
    "thunder": dict(
        scene=T(("One night, there was a big storm. Boom! went the thunder.", 2),
                ("One evening, dark clouds filled the sky. Then the thunder began to roar.", 2)),
        react=T(("{H} shook with fear.", 2), ("{H} covered {his} ears.", 2)),
        call=T(('"Help!" {he} cried.', 2), ("{He} hid under {his} blanket.", 2)),
        comfort=T(('{F} held {him} close. "Thunder is just the sound of the clouds. It can\'t hurt you," {fhe} said.', 2),
                  ('{F} said, "Let\'s count the seconds between the flash and the boom. The storm is far away."', 2)),
        brave=T(("{H} counted with {F}. One, two, three, four, five.", 1), ("{H} listened to the rain on the roof.", 2)),
        end=T(("Soon the storm was over, and {H} fell fast asleep.", 3),
              ("After that, {H} was not afraid of thunder anymore.", 2)),
    ),
    "dog": dict(
        scene=T(("One day, the big dog ran up to {H} and barked.", 2),
                ("One morning, the gate was open, and the big dog came running out.", 2)),
        react=T(("{H} froze.", 1), ("{H} wanted to run away.", 2)),
        call=T(('"Help!" {he} cried.', 2), ("{He} hid behind a tree.", 1)),
        comfort=T(('{F} said, "He just wants to play. Hold out your hand." The dog sniffed {H}\'s hand and wagged its tail.', 2),
                  ("{F} knelt down and patted the dog. The dog rolled over and wagged its tail.", 2)),
        brave=T(("{H} patted the dog too. Its fur was soft.", 2), ("{H} laughed. The dog licked {his} nose.", 2)),
        end=T(("Soon {H} and the dog were good friends.", 3),
              ("After that, {H} played with the big dog every day.", 2)),
    ),
    "water": dict(
        scene=T(("One hot day, {H}'s family went to the lake to swim.", 2),
                ("One summer day, everyone went to swim in the lake.", 2)),
        react=T(("{H} stayed on the sand and watched.", 2), ("{H} did not want to go in.", 2)),
        call=T(('"The water is too deep," {he} said.', 2), ("", 1)),
        comfort=T(("{F} held {his} hand, and they walked into the water slowly.", 2),
                  ('{F} said, "We will stay where it is not deep. I am right here."', 2)),
        brave=T(("{H} kicked {his} feet and splashed.", 2), ("The water was cool and nice.", 2)),
        end=T(("By the end of the day, {H} was splashing and laughing.", 3),
              ("After that, {H} loved to swim in the lake.", 2)),
    ),
}
FEAR_HELPER_NIGHT = T(("<Family> came and sat next to {him}.", 3), ("Then <family> came in.", 2),
                      ("<Family> heard {him} and came right away.", 2))
FEAR_HELPER_DAY = T(("Then <family> came over.", 2), ("<Family> saw {him} and came right away.", 2),
                    ("Luckily, <family> was close by.", 2))
FEAR_MORAL = T(("{H} learned that being brave means trying even when you are scared.", 2),
               ("", 3))


def _plot_fear(w, c):
    fear = FEAR.data[w.sent(FEAR, c)]
    f = FEARS[fear]
    w.para()
    w.sent(f["scene"], c)
    w.sent(f["react"], c)
    w.sent(f["call"], c)
    w.sent(FEAR_HELPER_NIGHT if fear in ("dark", "thunder") else FEAR_HELPER_DAY, c)
    w.sent(f["comfort"], c)
    w.sent(f["brave"], c)
    w.para()
    w.sent(f["end"], c)
    w.sent(FEAR_MORAL, c)


# ======================================================================================
# Plot 6: a day out
# ======================================================================================

TRIP_GO = T(("One sunny day, <family> took {H} to the <trip>.", 3),
            ("One morning, {H} and <family> went to the <trip>.", 3),
            ('"Let\'s go to the <trip> today!" said <family>. {H} was so excited.', 2))
TRIP = T(("zoo", 3, "zoo"), ("beach", 3, "beach"), ("farm", 3, "farm"), ("lake", 2, "lake"),
         ("fair", 1, "fair"))
SIGHTS = {
    "zoo": T(("big lions", 2), ("tall giraffes", 2), ("funny monkeys", 3), ("a huge elephant", 2),
             ("colorful birds", 1), ("a sleepy bear", 1)),
    "beach": T(("pretty shells", 3), ("little crabs", 2), ("big waves", 2), ("white seagulls", 2),
               ("a boat far away", 1)),
    "farm": T(("brown cows", 2), ("pink pigs", 2), ("a little lamb", 2), ("busy chickens", 2),
              ("a big red barn", 1), ("a tall horse", 1)),
    "lake": T(("fish in the water", 2), ("ducks swimming", 3), ("a little boat", 2), ("green frogs", 1)),
    "fair": T(("a big wheel", 2), ("bright lights", 2), ("a man with balloons", 1), ("a merry-go-round", 2)),
}


@slot("trip")
def _trip(w, c):
    if "_trip" in c:
        w.say(c["trip"])  # the second mention repeats the place (probability 1)
        return
    i = w.pick(TRIP, c)
    c["trip"], c["_trip"] = TRIP.texts[i], TRIP.data[i]


@slot("sight")
def _sight(w, c):
    t = SIGHTS[c["_trip"]]
    seen = c.setdefault("_sights", set())
    if seen:
        t = t.without(frozenset(seen))
    seen.add(t.texts[w.pick(t, c)])


TRIP_SEE = T(("First, they saw <sight>. Then they saw <sight>.", 3),
             ("{H} saw <sight> and <sight>.", 2),
             ("They saw <sight>, <sight> and <sight>.", 1))
TRIP_FEEL = T(("{H} laughed and clapped {his} hands.", 2), ("{H} had never seen anything like it!", 2),
              ("", 2))
TRIP_EVENT = T(
    ("Then dark clouds came, and it began to rain. {H} and {F} ran under a big tree. When the rain stopped, they saw a beautiful rainbow!", 2),
    ("Then {F} bought {him} a big ice cream. It was cold and sweet.", 2),
    ('Then {H} could not see {F} anywhere! {He} felt scared, but {he} stayed where {he} was. Soon {F} found {him}, and they hugged.', 1),
    ("There {H} met a little <other>, and they played together all afternoon.", 2),
)
TRIP_DO = {
    "zoo": T(("{H} watched the monkeys swing from branch to branch.", 2),
             ("At lunch, {H} and {F} had a picnic near the elephants.", 2)),
    "beach": T(("{H} jumped over the waves and built a castle in the sand.", 2),
               ("{H} and {F} looked for shells along the water.", 2)),
    "farm": T(("{H} fed the chickens and patted a little goat.", 2),
              ("The farmer let {H} give the horse a carrot.", 2)),
    "lake": T(("{H} and {F} threw small stones into the water. Plop, plop!", 2),
              ("They rode in a little boat all the way across the lake.", 1)),
    "fair": T(("{H} rode the merry-go-round three times.", 2),
              ("{F} won {him} a big teddy bear.", 2)),
}
TRIP_HOME = T(("At the end of the day, they went home.", 3),
              ("When the sun went down, it was time to go home.", 2))
TRIP_END = T(("That night, {H} dreamed about the <trip>.", 2),
             ("{H} was tired but very happy.", 2),
             ('"Can we come back soon?" asked {H}.', 2))
TRIP_BEST = T(("It was the best day ever.", 2), ("", 3))


def _plot_trip(w, c):
    w.para()
    w.sent(TRIP_GO, c)
    w.sent(TRIP_SEE, c)
    w.sent(TRIP_FEEL, c)
    w.sent(TRIP_DO[c["_trip"]], c)
    w.sent(TRIP_EVENT, c)
    w.para()
    w.sent(TRIP_HOME, c)
    w.sent(TRIP_END, c)
    w.sent(TRIP_BEST, c)


# ======================================================================================
# The story
# ======================================================================================

PLOTS = {"lost": _plot_lost, "goal": _plot_goal, "help": _plot_help, "share": _plot_share,
          "fear": _plot_fear, "trip": _plot_trip}
for _name, _fn in PLOTS.items():
    SLOTS["plot_" + _name] = _fn
PLOT = T(("<plot_lost>", 4), ("<plot_goal>", 4), ("<plot_help>", 3), ("<plot_share>", 2),
         ("<plot_fear>", 2), ("<plot_trip>", 3))
END = "The end."


def story(w) -> None:
    """The whole grammar: an opening, one plot, ``The end.``."""
    c: dict = {}
    _opening(w, c)
    w.pick(PLOT, c)
    w.line(END)


# every choice table and option list, importable as gptcourse.stories.NAME
__all__ = ["story", *(name for name, value in dict(globals()).items()
                      if name.isupper() and not name.startswith("_") and name != "SLOTS"
                      and isinstance(value, (Table, dict, str)))]
